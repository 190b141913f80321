/* A C server written the way real servers used the TOA kernel modules:
 * getsockopt(fd, IPPROTO_IP, 1345, &peer, &len) with struct ttm_peer.
 * Accepts COUNT connections on 0.0.0.0:PORT; for each prints one JSON line
 * and echoes the client's first line back (the lab client checks the echo).
 * Usage: peer_server PORT COUNT */
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
    if (argc != 3) {
        fprintf(stderr, "usage: %s PORT COUNT\n", argv[0]);
        return 2;
    }
    int one = 1;
    int srv = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[1]))};
    setsockopt(srv, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (bind(srv, (struct sockaddr *)&addr, sizeof(addr)) || listen(srv, 16)) {
        perror("bind/listen");
        return 1;
    }
    printf("listening\n");
    fflush(stdout);
    for (int n = atoi(argv[2]); n > 0; n--) {
        struct sockaddr_in from;
        socklen_t fromlen = sizeof(from);
        int fd = accept(srv, (struct sockaddr *)&from, &fromlen);
        if (fd < 0) {
            perror("accept");
            return 1;
        }
        char accepted[INET_ADDRSTRLEN], client[INET6_ADDRSTRLEN] = "";
        inet_ntop(AF_INET, &from.sin_addr, accepted, sizeof(accepted));

        struct ttm_peer peer;
        memset(&peer, 0xAA, sizeof(peer)); /* so stale bytes would show */
        socklen_t len = sizeof(peer);
        int rc = getsockopt(fd, IPPROTO_IP, 1345, &peer, &len);
        int err = rc ? errno : 0;
        if (rc == 0)
            inet_ntop(peer.af, peer.addr, client, sizeof(client));
        printf("{\"accept\":\"%s:%u\",\"rc\":%d,\"errno\":%d,\"len\":%u,\"af\":%u,"
               "\"client\":\"%s:%u\",\"tail_zero\":%s}\n",
               accepted, ntohs(from.sin_port), rc, err, (unsigned)len, peer.af, client,
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
