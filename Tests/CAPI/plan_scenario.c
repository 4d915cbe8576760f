/*
 * One scripted failover through libipsecha, on a virtual clock, both members in this process:
 * the active member gets three IKE SAs and six Child SAs, sends and receives ESP, has an
 * exchange in flight, and is lost; the standby's takeover plan is printed, one line per entry.
 * CAPITests runs the same script through ClusterMember in Swift and compares the lines:
 * the C and the Swift embedder must reach the same plan from the same inputs.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <ipsecha.h>

#define MEMBERS 2

static ipsecha_member *members[MEMBERS];
static int alive[MEMBERS] = {1, 1};
static uint64_t now = 1000000000u;
static int took_over = 0;
static size_t rekey_count = 0;

struct queued {
    struct queued *next;
    int to;
    size_t length;
    uint8_t bytes[];
};
static struct queued *head = NULL, *tail = NULL;

static void check(int status, const char *what, int member) {
    if (status == IPSECHA_OK) return;
    fprintf(stderr, "%s: %s (%s)\n", what, ipsecha_status_name(status), ipsecha_member_last_error(members[member]));
    exit(2);
}

static void drain(int i) {
    ipsecha_action action;
    ipsecha_action_init(&action);
    int status;
    while ((status = ipsecha_next_action(members[i], &action)) == IPSECHA_OK) {
        if (action.kind == IPSECHA_ACTION_TRANSMIT && alive[i]) {
            struct queued *datagram = malloc(sizeof *datagram + action.datagram_length);
            if (!datagram) exit(2);
            datagram->next = NULL;
            datagram->to = action.peer - 1;
            datagram->length = action.datagram_length;
            memcpy(datagram->bytes, action.datagram, action.datagram_length);
            if (tail) tail->next = datagram; else head = datagram;
            tail = datagram;
        } else if (action.kind == IPSECHA_ACTION_TOOK_OVER) {
            took_over = 1;
            rekey_count = action.rekey_count;
        }
    }
    check(status == IPSECHA_NO_ACTION ? IPSECHA_OK : status, "ipsecha_next_action", i);
}

/* One millisecond: every member that is alive ticks, then datagrams are delivered in order. */
static void run(unsigned milliseconds) {
    for (unsigned step = 0; step < milliseconds && !took_over; step++) {
        now += 1000000u;
        for (int i = 0; i < MEMBERS; i++) {
            if (!alive[i]) continue;
            check(ipsecha_tick(members[i], now), "ipsecha_tick", i);
            drain(i);
        }
        while (head) {
            struct queued *datagram = head;
            head = datagram->next;
            if (!head) tail = NULL;
            if (alive[datagram->to]) {
                check(ipsecha_receive(members[datagram->to], datagram->bytes, datagram->length, now), "ipsecha_receive", datagram->to);
                drain(datagram->to);
            }
            free(datagram);
        }
    }
}

static uint32_t child_spi(unsigned i, unsigned j) { return 0x1000u + 16u * i + j; }

static void establish(void) {
    uint8_t keys[7 * 32];
    for (size_t b = 0; b < sizeof keys; b++) keys[b] = (uint8_t)b;
    uint8_t child_key[36];
    for (size_t b = 0; b < sizeof child_key; b++) child_key[b] = (uint8_t)(b + 1);
    for (unsigned i = 0; i < 3; i++) {
        ipsecha_ike_sa ike;
        ipsecha_ike_sa_init(&ike);
        ike.initiator_spi = 0x1111000000000000u + i;
        ike.responder_spi = 0x2222000000000000u + i;
        memcpy(ike.local_address, (uint8_t[]){192, 0, 2, 1}, 4);
        memcpy(ike.remote_address, (uint8_t[]){198, 51, 100, (uint8_t)(10 + i)}, 4);
        ike.encryption = 20;
        ike.encryption_key_bits = 256;
        ike.prf = 5;
        ike.key_exchange = 31;
        ike.keys = keys;
        ike.keys_length = sizeof keys;
        for (int k = 0; k < 7; k++) ike.key_lengths[k] = 32;
        ike.extensions = i == 0 ? IPSECHA_IKE_CHILD_SA_ESN
                       : i == 1 ? IPSECHA_IKE_MESSAGE_ID_SYNC | IPSECHA_IKE_REPLAY_COUNTER_SYNC | IPSECHA_IKE_CHILD_SA_ESN
                                : IPSECHA_IKE_MESSAGE_ID_SYNC;
        ike.next_request_id = 1;
        ike.next_expected_request_id = 2 + i;
        check(ipsecha_ike_sa_create(members[0], &ike, now, NULL), "ipsecha_ike_sa_create", 0);
        for (unsigned j = 0; j < 2; j++) {
            ipsecha_traffic_selector local = {4, 0, 0, 65535, {10, 0, 0, 0}, {10, 0, 0, 255}};
            ipsecha_traffic_selector remote = {4, 17, 500, 500, {10, 1, (uint8_t)i, 0}, {10, 1, (uint8_t)i, 255}};
            ipsecha_child_sa child;
            ipsecha_child_sa_init(&child);
            child.inbound_spi = child_spi(i, j);
            child.outbound_spi = 0x2000u + 16u * i + j;
            child.ike_initiator_spi = ike.initiator_spi;
            child.ike_responder_spi = ike.responder_spi;
            child.encryption = 20;
            child.encryption_key_bits = 256;
            child.inbound_encryption_key = child_key;
            child.inbound_encryption_key_length = sizeof child_key;
            child.outbound_encryption_key = child_key;
            child.outbound_encryption_key_length = sizeof child_key;
            child.extended_sequence_numbers = i != 2;
            child.replay_window_size = j == 0 ? 64 : 1024;
            child.soft_seconds = 3000;
            child.hard_seconds = 3600;
            child.local_selectors = &local;
            child.local_selector_count = 1;
            child.remote_selectors = &remote;
            child.remote_selector_count = 1;
            check(ipsecha_child_sa_create(members[0], &child, now, NULL), "ipsecha_child_sa_create", 0);
        }
    }
}

static void traffic(uint32_t spi, uint64_t outbound, uint64_t inbound) {
    for (uint64_t p = 0; p < outbound; p++) {
        uint64_t sequence;
        check(ipsecha_outbound_sequence_number(members[0], spi, 1200, &sequence, NULL), "ipsecha_outbound_sequence_number", 0);
    }
    for (uint64_t wire = 1; wire <= inbound; wire++) {
        uint64_t sequence;
        check(ipsecha_inbound_check(members[0], spi, (uint32_t)wire, &sequence), "ipsecha_inbound_check", 0);
        check(ipsecha_inbound_commit(members[0], spi, sequence, 1200), "ipsecha_inbound_commit", 0);
    }
}

static void optional(char *out, size_t size, uint32_t present, uint64_t value) {
    if (present) snprintf(out, size, "%" PRIu64, value); else snprintf(out, size, "-");
}

int main(void) {
    uint8_t key[32];
    for (int b = 0; b < 32; b++) key[b] = (uint8_t)(b + 1);
    for (int i = 0; i < MEMBERS; i++) {
        uint16_t peer = (uint16_t)(i == 0 ? 2 : 1);
        ipsecha_config config;
        ipsecha_config_init(&config);
        config.cluster_id = 7;
        config.member_id = (uint16_t)(i + 1);
        config.active_member_id = 1;
        config.peer_ids = &peer;
        config.peer_count = 1;
        config.cluster_key = key;
        config.cluster_key_length = sizeof key;
        check(ipsecha_member_create(&config, &members[i]), "ipsecha_member_create", i);
    }

    run(300);
    establish();
    run(100);
    for (unsigned k = 0; k < 6; k++) traffic(child_spi(k / 2, k % 2), (k + 1) * 1000u, (k + 1) * 100u);
    check(ipsecha_ike_sa_exchange(members[0], 0x1111000000000000u, 0x2222000000000000u, 2, 0, 0, now, NULL), "ipsecha_ike_sa_exchange", 0);
    check(ipsecha_ike_sa_update_message_ids(members[0], 0x1111000000000002u, 0x2222000000000002u, 5, 9, now, NULL),
          "ipsecha_ike_sa_update_message_ids", 0);
    run(120);
    traffic(child_spi(0, 0), 300, 0);
    run(10);
    alive[0] = 0;
    run(3000);
    if (!took_over) {
        fprintf(stderr, "no takeover\n");
        return 1;
    }

    for (size_t index = 0;; index++) {
        ipsecha_ike_sa_takeover entry;
        ipsecha_ike_sa_takeover_init(&entry);
        int status = ipsecha_takeover_ike_sa(members[1], index, &entry);
        if (status == IPSECHA_E_NOT_FOUND) break;
        check(status, "ipsecha_takeover_ike_sa", 1);
        char delta[24];
        optional(delta, sizeof delta, entry.has_replay_counter_delta, entry.replay_counter_delta);
        printf("ike %016" PRIx64 "_%016" PRIx64 " class=%u mid=%u next=%" PRIu64 " expected=%" PRIu64 " sync=%u/%u delta=%s"
               " unconfirmed=%u reason=%s\n",
               entry.initiator_spi, entry.responder_spi, entry.classification, entry.message_ids, entry.next_request_id,
               entry.next_expected_request_id, entry.sync_send, entry.sync_receive, delta, entry.has_unconfirmed_rekey,
               entry.reason);
    }
    for (size_t index = 0;; index++) {
        ipsecha_child_sa_takeover entry;
        ipsecha_child_sa_takeover_init(&entry);
        int status = ipsecha_takeover_child_sa(members[1], index, &entry);
        if (status == IPSECHA_E_NOT_FOUND) break;
        check(status, "ipsecha_takeover_child_sa", 1);
        char age[24], rate[24];
        optional(age, sizeof age, entry.has_checkpoint_age, entry.checkpoint_age_ns);
        optional(rate, sizeof rate, entry.has_packets_per_second, entry.packets_per_second);
        ipsecha_child_sa_counters counters;
        ipsecha_child_sa_counters_init(&counters);
        check(ipsecha_child_sa_counters_get(members[1], entry.inbound_spi, &counters), "ipsecha_child_sa_counters_get", 1);
        printf("child %08x parent=%016" PRIx64 " out=%u last_sent=%" PRIu64 " in=%u in_advance=%" PRIu64 " advance=%" PRIu64
               " age_ns=%s pps=%s suspect=%u counters=%" PRIu64 "/%" PRIu64 "\n",
               entry.inbound_spi, entry.ike_initiator_spi, entry.outbound, entry.outbound_last_sent, entry.inbound,
               entry.inbound_advance, entry.advance, age, rate, entry.suspect, counters.outbound_last_sent,
               counters.inbound_highest);
    }
    printf("rekey %zu\n", rekey_count);
    for (int i = 0; i < MEMBERS; i++) ipsecha_member_destroy(members[i]);
    return 0;
}
