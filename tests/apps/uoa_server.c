/* A UDP server written the way servers behind DPVS use uoa.ko: after each
 * recvfrom() it asks getsockopt(fd, IPPROTO_IP, 2048, &map, &len) with the
 * datagram's source in a struct uoa_param_map, wildcard local address.
 * Serves COUNT datagrams on 0.0.0.0:PORT (with a third argument "6", on
 * [::]:PORT, dual-stack); for each prints one JSON line and echoes the
 * payload back prefixed with the client it was told.
 * With a third argument "connect", it connect()s its socket to the first
 * datagram's source and asks from that connected socket; with "pairs", it
 * receives two datagrams before each lookup (which it makes for the second).
 * Usage: uoa_server PORT COUNT [6|connect|pairs] */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define UOA_SO_GET_LOOKUP 2048

union inet_addr {
    struct in_addr in;
    struct in6_addr in6;
};

struct uoa_param_map {
    uint16_t af;
    union inet_addr saddr;
    union inet_addr daddr;
    uint16_t sport;
    uint16_t dport;
    uint16_t real_af;
    union inet_addr real_saddr;
    uint16_t real_sport;
} __attribute__((__packed__));

static void text_of(int af, const void *addr, uint16_t port_be, char *out, size_t n) {
    char ip[INET6_ADDRSTRLEN] = "?";
    inet_ntop(af, addr, ip, sizeof ip);
    if (af == AF_INET6)
        snprintf(out, n, "[%s]:%u", ip, ntohs(port_be));
    else
        snprintf(out, n, "%s:%u", ip, ntohs(port_be));
}

int main(int argc, char **argv) {
    if (argc != 3 && argc != 4) {
        fprintf(stderr, "usage: %s PORT COUNT [6|connect|pairs]\n", argv[0]);
        return 2;
    }
    int v6 = argc == 4 && !strcmp(argv[3], "6");
    int connected = argc == 4 && !strcmp(argv[3], "connect");
    int pairs = argc == 4 && !strcmp(argv[3], "pairs");
    int port = atoi(argv[1]), count = atoi(argv[2]), zero = 0;
    int fd = socket(v6 ? AF_INET6 : AF_INET, SOCK_DGRAM, 0);
    if (fd < 0) {
        perror("socket");
        return 1;
    }
    struct sockaddr_storage local;
    memset(&local, 0, sizeof local);
    socklen_t local_len;
    if (v6) {
        setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof zero);
        struct sockaddr_in6 *a = (struct sockaddr_in6 *)&local;
        a->sin6_family = AF_INET6;
        a->sin6_port = htons(port);
        a->sin6_addr = in6addr_any;
        local_len = sizeof *a;
    } else {
        struct sockaddr_in *a = (struct sockaddr_in *)&local;
        a->sin_family = AF_INET;
        a->sin_port = htons(port);
        a->sin_addr.s_addr = htonl(INADDR_ANY);
        local_len = sizeof *a;
    }
    if (bind(fd, (struct sockaddr *)&local, local_len) != 0) {
        perror("bind");
        return 1;
    }
    printf("listening\n");
    fflush(stdout);
    for (int i = 0; i < count; i++) {
        char buf[2048], from[80], real[80] = "";
        struct sockaddr_storage peer;
        socklen_t peer_len = sizeof peer;
        ssize_t n = recvfrom(fd, buf, sizeof buf - 1, 0, (struct sockaddr *)&peer, &peer_len);
        if (n >= 0 && pairs) {
            /* The first of the pair goes unasked. */
            peer_len = sizeof peer;
            n = recvfrom(fd, buf, sizeof buf - 1, 0, (struct sockaddr *)&peer, &peer_len);
        }
        if (n < 0) {
            perror("recvfrom");
            return 1;
        }
        buf[n] = 0;
        struct uoa_param_map map;
        memset(&map, 0, sizeof map);
        map.af = peer.ss_family;
        map.dport = htons(port);
        if (peer.ss_family == AF_INET6) {
            struct sockaddr_in6 *p = (struct sockaddr_in6 *)&peer;
            map.sport = p->sin6_port;
            memcpy(&map.saddr.in6, &p->sin6_addr, 16);
            text_of(AF_INET6, &p->sin6_addr, p->sin6_port, from, sizeof from);
        } else {
            struct sockaddr_in *p = (struct sockaddr_in *)&peer;
            map.sport = p->sin_port;
            memcpy(&map.saddr.in, &p->sin_addr, 4);
            text_of(AF_INET, &p->sin_addr, p->sin_port, from, sizeof from);
        }
        if (connected && i == 0 && connect(fd, (struct sockaddr *)&peer, peer_len) != 0) {
            perror("connect");
            return 1;
        }
        socklen_t len = sizeof map;
        int rc = getsockopt(fd, IPPROTO_IP, UOA_SO_GET_LOOKUP, &map, &len);
        int err = rc == 0 ? 0 : errno;
        if (rc == 0)
            text_of(map.real_af, &map.real_saddr, map.real_sport, real, sizeof real);
        printf("{\"from\":\"%s\",\"errno\":%d,\"len\":%u,\"real\":\"%s\",\"payload\":\"%s\"}\n",
               from, err, (unsigned)len, real, buf);
        fflush(stdout);
        char reply[2200];
        int m = snprintf(reply, sizeof reply, "%s %s", rc == 0 ? real : "-", buf);
        if (connected)
            send(fd, reply, m, 0);
        else
            sendto(fd, reply, m, 0, (struct sockaddr *)&peer, peer_len);
    }
    return 0;
}
