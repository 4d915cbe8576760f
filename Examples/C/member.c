/*
 * A cluster member written in C on libipsecha: the active member or the standby of a
 * two-member cluster, over UDP on loopback, one process each.
 *
 *   ipsecha-member active|standby OWN_PORT PEER_PORT KEY_FILE
 *       [IKE_SAS [HEARTBEAT_MS [MISS_COUNT [CIPHER [LAST_RESORT_MS]]]]]
 *
 * KEY_FILE holds the 32-byte cluster key. Half a second after it starts, the active member
 * (ID 1) makes IKE_SAS IKE SAs with two Child SAs each, as an IKE daemon would after IKE_AUTH,
 * and from then on sends ESP on them: it takes
 * outbound sequence numbers from the member and checks inbound ones, and the member
 * checkpoints the counters to the standby. It prints "active: sent SPI LAST" for every Child
 * SA every 100 ms and runs until it is killed. The standby (ID 2) joins by bulk resync, prints
 * "standby: ready", and when the active member falls silent takes over: it prints the takeover
 * plan entry by entry and the counters it resumes from, then exits 0 (1 after 300 s without a
 * takeover). scripts/c-api.sh kills the active member with SIGKILL and checks the standby's
 * plan against what the active member said it sent. A standby that hears no active member
 * for LAST_RESORT_MS (the library's default, 1 s, when not given) takes over with nothing as
 * the last resort: started before an active member that is slow to start (under valgrind, on
 * a busy machine), it needs longer.
 *
 * The event loop is what any daemon's is: poll the socket until the member's next deadline,
 * feed it what arrived and the time, then drain its actions.
 */
#define _POSIX_C_SOURCE 200809L
#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <ipsecha.h>

#define MAX_IKE_SAS 64

static const char *role = "member";

/* The library's log lines, into this daemon's own log (here: standard error, with its role). */
static void log_line(void *context, int level, const char *label, const char *message) {
    (void)context;
    static const char *const names[] = {"trace", "debug", "info", "notice", "warning", "error", "critical"};
    fprintf(stderr, "%s: %s %s: %s\n", role, level >= 0 && level <= 6 ? names[level] : "?", label, message);
}

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void fail(const char *what, int status, const ipsecha_member *member) {
    fprintf(stderr, "%s: %s (%s)\n", what, ipsecha_status_name(status), member ? ipsecha_member_last_error(member) : "");
    exit(2);
}

#define CHECK(call, member)                                                                                            \
    do {                                                                                                               \
        int status_ = (call);                                                                                          \
        if (status_ != IPSECHA_OK) fail(#call, status_, member);                                                     \
    } while (0)

struct cluster_link {
    int fd;
    struct sockaddr_in peer;
};

static struct sockaddr_in loopback(uint16_t port) {
    struct sockaddr_in address;
    memset(&address, 0, sizeof address);
    address.sin_family = AF_INET;
    address.sin_port = htons(port);
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    return address;
}

static int read_key(const char *path, uint8_t key[32]) {
    FILE *file = fopen(path, "rb");
    if (!file) return -1;
    size_t got = fread(key, 1, 32, file);
    fclose(file);
    return got == 32 ? 0 : -1;
}

/* Drains the member's actions: datagrams go out, the rest is reported. Returns 1 once the
 * member took over (after printing the plan). */
static int drain(ipsecha_member *member, struct cluster_link *link, uint64_t *released) {
    ipsecha_action action;
    ipsecha_action_init(&action);
    int took_over = 0;
    int status;
    while ((status = ipsecha_next_action(member, &action)) == IPSECHA_OK) {
        switch (action.kind) {
        case IPSECHA_ACTION_TRANSMIT:
            /* The synch channel repairs losses itself: a failed send is a lost datagram. */
            (void)sendto(link->fd, action.datagram, action.datagram_length, 0, (const struct sockaddr *)&link->peer,
                         sizeof link->peer);
            break;
        case IPSECHA_ACTION_RELEASED:
            /* An IKE daemon sends the reply it held back for this token now. */
            (*released)++;
            break;
        case IPSECHA_ACTION_BECAME_READY:
            printf("%s: ready\n", role);
            fflush(stdout);
            break;
        case IPSECHA_ACTION_TOOK_OVER: {
            printf("%s: took over: %zu IKE SAs, %zu Child SAs, %zu to rekey\n", role, action.ike_sa_count,
                   action.child_sa_count, action.rekey_count);
            for (size_t i = 0; i < action.ike_sa_count; i++) {
                ipsecha_ike_sa_takeover entry;
                ipsecha_ike_sa_takeover_init(&entry);
                CHECK(ipsecha_takeover_ike_sa(member, i, &entry), member);
                printf("plan ike %016" PRIx64 "_%016" PRIx64 " class=%u message_ids=%u next=%" PRIu64 " expected=%" PRIu64
                       " reason=\"%s\"\n",
                       entry.initiator_spi, entry.responder_spi, entry.classification, entry.message_ids,
                       entry.next_request_id, entry.next_expected_request_id, entry.reason);
            }
            for (size_t i = 0; i < action.child_sa_count; i++) {
                ipsecha_child_sa_takeover entry;
                ipsecha_child_sa_takeover_init(&entry);
                CHECK(ipsecha_takeover_child_sa(member, i, &entry), member);
                ipsecha_child_sa_counters counters;
                ipsecha_child_sa_counters_init(&counters);
                CHECK(ipsecha_child_sa_counters_get(member, entry.inbound_spi, &counters), member);
                printf("plan child %08x outbound=%u resume_after=%" PRIu64 " advance=%" PRIu64 " inbound=%u"
                       " inbound_top=%" PRIu64 " checkpoint_age_ms=%" PRIu64 "\n",
                       entry.inbound_spi, entry.outbound, entry.outbound_last_sent, entry.advance, entry.inbound,
                       counters.inbound_highest, entry.checkpoint_age_ns / 1000000u);
            }
            fflush(stdout);
            took_over = 1;
            break;
        }
        case IPSECHA_ACTION_STEPPED_DOWN:
        case IPSECHA_ACTION_HELD_BACK:
            printf("%s: %s\n", role, action.reason);
            break;
        default:
            break;
        }
    }
    if (status != IPSECHA_NO_ACTION) fail("ipsecha_next_action", status, member);
    return took_over;
}

/* The IKE SA and Child SAs an IKE daemon would have after IKE_AUTH with peer i. */
static void establish(ipsecha_member *member, unsigned i, uint64_t now, uint64_t *last_token) {
    uint8_t keys[7 * 32];
    for (size_t b = 0; b < sizeof keys; b++) keys[b] = (uint8_t)(b * 7 + i);
    ipsecha_ike_sa ike;
    ipsecha_ike_sa_init(&ike);
    ike.initiator_spi = 0x1000000000000000u + i;
    ike.responder_spi = 0x2000000000000000u + i;
    ike.address_family = 4;
    memcpy(ike.local_address, (uint8_t[]){192, 0, 2, 1}, 4);
    memcpy(ike.remote_address, (uint8_t[]){198, 51, 100, (uint8_t)(i + 1)}, 4);
    ike.local_port = ike.remote_port = 4500;
    ike.udp_encapsulation = 1;
    ike.encryption = 20; /* AES-GCM-16 */
    ike.encryption_key_bits = 256;
    ike.prf = 5; /* HMAC-SHA2-256 */
    ike.key_exchange = 31; /* Curve25519 */
    ike.keys = keys;
    ike.keys_length = sizeof keys;
    for (int k = 0; k < 7; k++) ike.key_lengths[k] = 32;
    ike.extensions = IPSECHA_IKE_MESSAGE_ID_SYNC | IPSECHA_IKE_REPLAY_COUNTER_SYNC | IPSECHA_IKE_CHILD_SA_ESN;
    ike.next_request_id = 0;
    ike.next_expected_request_id = 2; /* IKE_SA_INIT and IKE_AUTH answered */
    CHECK(ipsecha_ike_sa_create(member, &ike, now, last_token), member);

    for (unsigned j = 0; j < 2; j++) {
        uint8_t key_in[36], key_out[36];
        for (size_t b = 0; b < sizeof key_in; b++) {
            key_in[b] = (uint8_t)(b + i + j);
            key_out[b] = (uint8_t)(b * 3 + i + j);
        }
        ipsecha_traffic_selector local = {4, 0, 0, 65535, {10, 0, 0, 0}, {10, 0, 0, 255}};
        ipsecha_traffic_selector remote = {4, 0, 0, 65535, {10, 1, (uint8_t)i, 0}, {10, 1, (uint8_t)i, 255}};
        ipsecha_child_sa child;
        ipsecha_child_sa_init(&child);
        child.inbound_spi = 0xc0000000u + i * 16 + j;
        child.outbound_spi = 0xd0000000u + i * 16 + j;
        child.ike_initiator_spi = ike.initiator_spi;
        child.ike_responder_spi = ike.responder_spi;
        child.encryption = 20;
        child.encryption_key_bits = 256;
        child.inbound_encryption_key = key_in;
        child.inbound_encryption_key_length = sizeof key_in;
        child.outbound_encryption_key = key_out;
        child.outbound_encryption_key_length = sizeof key_out;
        child.extended_sequence_numbers = 1;
        child.replay_window_size = 1024;
        child.soft_seconds = 3000;
        child.hard_seconds = 3600;
        child.request_id = i * 16 + j;
        child.local_selectors = &local;
        child.local_selector_count = 1;
        child.remote_selectors = &remote;
        child.remote_selector_count = 1;
        CHECK(ipsecha_child_sa_create(member, &child, now, last_token), member);
    }
}

/* One millisecond of ESP on every Child SA: ten packets out, ten in. */
static void send_and_receive(ipsecha_member *member, unsigned ike_sas, uint64_t inbound_next[]) {
    for (unsigned i = 0; i < ike_sas; i++) {
        for (unsigned j = 0; j < 2; j++) {
            uint32_t spi = 0xc0000000u + i * 16 + j;
            for (int p = 0; p < 10; p++) {
                uint64_t sequence;
                CHECK(ipsecha_outbound_sequence_number(member, spi, 1400, &sequence, NULL), member);
                uint64_t wire = ++inbound_next[i * 2 + j];
                uint64_t full;
                CHECK(ipsecha_inbound_check(member, spi, (uint32_t)wire, &full), member);
                /* ... the ICV verifies ... */
                CHECK(ipsecha_inbound_commit(member, spi, full, 1400), member);
            }
        }
    }
}

static void report_sent(ipsecha_member *member, unsigned ike_sas) {
    for (unsigned i = 0; i < ike_sas; i++) {
        for (unsigned j = 0; j < 2; j++) {
            ipsecha_child_sa_counters counters;
            ipsecha_child_sa_counters_init(&counters);
            CHECK(ipsecha_child_sa_counters_get(member, 0xc0000000u + i * 16 + j, &counters), member);
            printf("active: sent %08x %" PRIu64 "\n", counters.inbound_spi, counters.outbound_last_sent);
        }
    }
    fflush(stdout);
}

int main(int argc, char **argv) {
    if (argc < 5 || (strcmp(argv[1], "active") != 0 && strcmp(argv[1], "standby") != 0)) {
        fprintf(stderr,
                "usage: %s active|standby OWN_PORT PEER_PORT KEY_FILE [IKE_SAS [HEARTBEAT_MS [MISS_COUNT [CIPHER [LAST_RESORT_MS]]]]]\n"
                "CIPHER: chacha20-poly1305 (default) or aes-256-gcm, the same on both members\n", argv[0]);
        return 2;
    }
    if (ipsecha_abi_version() != IPSECHA_ABI_VERSION) {
        fprintf(stderr, "libipsecha has ABI %u, this program was built for %d\n", ipsecha_abi_version(), IPSECHA_ABI_VERSION);
        return 2;
    }
    int active = strcmp(argv[1], "active") == 0;
    role = argv[1];
    ipsecha_set_log_function(log_line, NULL, IPSECHA_LOG_NOTICE);
    uint16_t own_port = (uint16_t)atoi(argv[2]);
    uint16_t peer_port = (uint16_t)atoi(argv[3]);
    unsigned ike_sas = argc > 5 ? (unsigned)atoi(argv[5]) : 4;
    unsigned heartbeat_ms = argc > 6 ? (unsigned)atoi(argv[6]) : 50;
    unsigned miss_count = argc > 7 ? (unsigned)atoi(argv[7]) : 3;
    uint32_t cipher = IPSECHA_SYNC_CIPHER_CHACHA20_POLY1305;
    if (argc > 8 && strcmp(argv[8], "aes-256-gcm") == 0) cipher = IPSECHA_SYNC_CIPHER_AES256_GCM;
    else if (argc > 8 && strcmp(argv[8], "chacha20-poly1305") != 0) {
        fprintf(stderr, "%s: unknown cipher\n", argv[8]);
        return 2;
    }
    if (!ipsecha_sync_cipher_available(cipher)) {
        fprintf(stderr, "%s does not run on this CPU\n", argv[8]);
        return 2;
    }
    if (ike_sas < 1 || ike_sas > MAX_IKE_SAS) ike_sas = 4;
    uint8_t key[32];
    if (read_key(argv[4], key) != 0) {
        fprintf(stderr, "%s: cannot read 32 bytes of cluster key\n", argv[4]);
        return 2;
    }

    struct cluster_link link = {socket(AF_INET, SOCK_DGRAM, 0), loopback(peer_port)};
    struct sockaddr_in own = loopback(own_port);
    if (link.fd < 0 || bind(link.fd, (const struct sockaddr *)&own, sizeof own) != 0) {
        perror("bind");
        return 2;
    }

    uint16_t me = active ? 1 : 2, peer = active ? 2 : 1;
    ipsecha_config config;
    ipsecha_config_init(&config);
    config.cluster_id = 7;
    config.member_id = me;
    config.active_member_id = 1;
    config.peer_ids = &peer;
    config.peer_count = 1;
    config.cluster_key = key;
    config.cluster_key_length = sizeof key;
    config.heartbeat_interval_ns = (uint64_t)heartbeat_ms * 1000000u;
    config.miss_count = miss_count;
    config.sync_cipher = cipher;
    if (argc > 9) config.last_resort_takeover_ns = strtoull(argv[9], NULL, 10) * 1000000u;
    ipsecha_member *member = NULL;
    CHECK(ipsecha_member_create(&config, &member), NULL);
    memset(key, 0, sizeof key);
    printf("%s: libipsecha %s, member %u, synch cipher %s\n", role, ipsecha_version(), me,
           cipher == IPSECHA_SYNC_CIPHER_AES256_GCM ? "aes-256-gcm" : "chacha20-poly1305");
    fflush(stdout);

    uint64_t start = now_ns(), released = 0, tokens = 0, last_token = 0, next_report = start;
    uint64_t inbound_next[2 * MAX_IKE_SAS] = {0};
    int established = 0;
    uint8_t datagram[65536];
    int done = 0;
    while (!done) {
        uint64_t now = now_ns();
        if (!active && now - start > 300000000000u) {
            fprintf(stderr, "standby: no takeover within 300 s\n");
            ipsecha_member_destroy(member);
            close(link.fd);
            return 1;
        }
        uint64_t deadline;
        CHECK(ipsecha_next_deadline(member, &deadline), member);
        /* The active member also wakes every millisecond to send ESP. */
        if (active && deadline > now + 1000000u) deadline = now + 1000000u;
        int timeout_ms = deadline > now ? (int)((deadline - now + 999999u) / 1000000u) : 0;
        struct pollfd fds = {link.fd, POLLIN, 0};
        if (poll(&fds, 1, timeout_ms) > 0) {
            ssize_t got;
            while ((got = recv(link.fd, datagram, sizeof datagram, MSG_DONTWAIT)) > 0) {
                CHECK(ipsecha_receive(member, datagram, (size_t)got, now_ns()), member);
                done |= drain(member, &link, &released);
            }
        }
        now = now_ns();
        CHECK(ipsecha_tick(member, now), member);
        done |= drain(member, &link, &released);
        /* Half a second in, as if the peers had come: the standby has joined by then, so each
         * token waits until it holds the change. */
        if (active && !established && now - start >= 500000000u) {
            for (unsigned i = 0; i < ike_sas; i++) establish(member, i, now, &last_token);
            tokens = 3 * ike_sas;
            established = 1;
        }
        if (established) {
            send_and_receive(member, ike_sas, inbound_next);
            if (now >= next_report) {
                next_report = now + 100000000u;
                if (released >= tokens) {
                    printf("active: %" PRIu64 " changes released, the standby holds them (last token %" PRIu64 ")\n",
                           released, last_token);
                    tokens = UINT64_MAX; /* said once */
                }
                report_sent(member, ike_sas);
            }
        }
    }
    /* Only the standby gets here, after its takeover. */
    ipsecha_member_status status;
    ipsecha_member_status_init(&status);
    CHECK(ipsecha_member_status_get(member, &status), member);
    printf("%s: active=%u ike_sas=%" PRIu64 " child_sas=%" PRIu64 "\n", role, status.active, status.ike_sa_count,
           status.child_sa_count);
    ipsecha_member_destroy(member);
    close(link.fd);
    return 0;
}
