/* A C server written the way real servers used the TOA kernel modules:
 * getsockopt(fd, IPPROTO_IP, 1345, &peer, &len) with struct ttm_peer.
 * Accepts COUNT connections on 0.0.0.0:PORT (with a third argument "6", on
 * [::]:PORT, dual-stack); for each prints one JSON line and echoes the
 * client's first line back (the lab client checks the echo).
 * Usage: peer_server PORT COUNT [6] */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

struct ttm_peer {
    uint16_t af;   /* host order */
    uint16_t port; /* network order */
    uint8_t addr[16];
};

int main(int argc, char **argv) {
    if (argc != 3 && argc != 4) {
        fprintf(stderr, "usage: %s PORT COUNT [6]\n", argv[0]);
        return 2;
    }
    int v6 = argc == 4 && !strcmp(argv[3], "6");
    int one = 1, zero = 0;
    int srv = socket(v6 ? AF_INET6 : AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in addr4 = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[1]))};
    struct sockaddr_in6 addr6 = {.sin6_family = AF_INET6, .sin6_port = htons(atoi(argv[1]))};
    setsockopt(srv, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (v6)
        setsockopt(srv, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof(zero));
    int bound = v6 ? bind(srv, (struct sockaddr *)&addr6, sizeof(addr6))
                   : bind(srv, (struct sockaddr *)&addr4, sizeof(addr4));
    if (bound || listen(srv, 16)) {
        perror("bind/listen");
        return 1;
    }
    printf("listening\n");
    fflush(stdout);
    for (int n = atoi(argv[2]); n > 0; n--) {
        struct sockaddr_storage from;
        socklen_t fromlen = sizeof(from);
        int fd = accept(srv, (struct sockaddr *)&from, &fromlen);
        if (fd < 0) {
            perror("accept");
            return 1;
        }
        char host[INET6_ADDRSTRLEN], accepted[INET6_ADDRSTRLEN + 2], client[INET6_ADDRSTRLEN] = "";
        unsigned from_port;
        if (from.ss_family == AF_INET6) {
            struct sockaddr_in6 *a = (struct sockaddr_in6 *)&from;
            inet_ntop(AF_INET6, &a->sin6_addr, host, sizeof(host));
            snprintf(accepted, sizeof(accepted), "[%s]", host);
            from_port = ntohs(a->sin6_port);
        } else {
            struct sockaddr_in *a = (struct sockaddr_in *)&from;
            inet_ntop(AF_INET, &a->sin_addr, accepted, sizeof(accepted));
            from_port = ntohs(a->sin_port);
        }

        struct ttm_peer peer;
        memset(&peer, 0xAA, sizeof(peer)); /* so stale bytes would show */
        socklen_t len = sizeof(peer);
        int rc = getsockopt(fd, IPPROTO_IP, 1345, &peer, &len);
        int err = rc ? errno : 0;
        if (rc == 0)
            inet_ntop(peer.af, peer.addr, client, sizeof(client));
        printf("{\"accept\":\"%s:%u\",\"rc\":%d,\"errno\":%d,\"len\":%u,\"af\":%u,"
               "\"client\":\"%s:%u\",\"tail_zero\":%s}\n",
               accepted, from_port, rc, err, (unsigned)len, peer.af, client,
               ntohs(peer.port),
               (peer.af == AF_INET && !memcmp(peer.addr + 4, "\0\0\0\0\0\0\0\0\0\0\0\0", 12))
                   ? "true" : "false");
        fflush(stdout);

        char buf[4096];
        ssize_t got;
        while ((got = read(fd, buf, sizeof(buf))) > 0)
            if (write(fd, buf, got) != got)
                break;
        close(fd);
    }
    return 0;
}
