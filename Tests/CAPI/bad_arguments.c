/*
 * Every entry point of libipsecha with bad arguments: NULL handles and pointers, structures
 * of the wrong size, short or overlong buffers, unknown IDs and SPIs, values out of range.
 * Each must give its error code, never crash, and change nothing; and configuration values at
 * their edges do what the header says (last_resort_takeover_ns on a virtual clock). Run under
 * AddressSanitizer and valgrind by scripts/c-api.sh. Prints one line per failed expectation;
 * exits 1 if any.
 */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include <ipsecha.h>

static int failures = 0;
static int checks = 0;

#define EXPECT(call, expected)                                                                                         \
    do {                                                                                                               \
        int got_ = (call);                                                                                             \
        checks++;                                                                                                      \
        if (got_ != (expected)) {                                                                                      \
            failures++;                                                                                                \
            printf("FAIL line %d: %s gave %s, expected %s\n", __LINE__, #call, ipsecha_status_name(got_),              \
                   ipsecha_status_name(expected));                                                                     \
        }                                                                                                              \
    } while (0)

#define EXPECT_TRUE(condition)                                                                                         \
    do {                                                                                                               \
        checks++;                                                                                                      \
        if (!(condition)) {                                                                                            \
            failures++;                                                                                                \
            printf("FAIL line %d: %s\n", __LINE__, #condition);                                                       \
        }                                                                                                              \
    } while (0)

static uint8_t key[32];
static uint16_t peer = 2;

static ipsecha_config good_config(uint16_t me, uint16_t active) {
    ipsecha_config config;
    ipsecha_config_init(&config);
    config.cluster_id = 1;
    config.member_id = me;
    config.active_member_id = active;
    config.peer_ids = &peer;
    config.peer_count = 1;
    config.cluster_key = key;
    config.cluster_key_length = sizeof key;
    return config;
}

static uint8_t ike_keys[7 * 16];
static ipsecha_traffic_selector any4 = {4, 0, 0, 65535, {0, 0, 0, 0}, {255, 255, 255, 255}};
static uint8_t child_key[36];

static ipsecha_ike_sa good_ike_sa(uint64_t initiator_spi) {
    ipsecha_ike_sa sa;
    ipsecha_ike_sa_init(&sa);
    sa.initiator_spi = initiator_spi;
    sa.responder_spi = 2;
    sa.remote_address[0] = 198;
    sa.encryption = 20;
    sa.prf = 5;
    sa.keys = ike_keys;
    sa.keys_length = sizeof ike_keys;
    for (int k = 0; k < 7; k++) sa.key_lengths[k] = 16;
    return sa;
}

static ipsecha_child_sa good_child_sa(uint32_t inbound_spi, uint64_t initiator_spi) {
    ipsecha_child_sa sa;
    ipsecha_child_sa_init(&sa);
    sa.inbound_spi = inbound_spi;
    sa.outbound_spi = inbound_spi + 1;
    sa.ike_initiator_spi = initiator_spi;
    sa.ike_responder_spi = 2;
    sa.encryption = 20;
    sa.inbound_encryption_key = child_key;
    sa.inbound_encryption_key_length = sizeof child_key;
    sa.outbound_encryption_key = child_key;
    sa.outbound_encryption_key_length = sizeof child_key;
    sa.local_selectors = &any4;
    sa.local_selector_count = 1;
    sa.remote_selectors = &any4;
    sa.remote_selector_count = 1;
    return sa;
}

static void configuration_and_lifecycle(void) {
    ipsecha_member *member = (ipsecha_member *)&key; /* must be overwritten with NULL on failure */
    EXPECT(ipsecha_member_create(NULL, &member), IPSECHA_E_NULL);
    EXPECT_TRUE(member == NULL);
    ipsecha_config config = good_config(1, 1);
    EXPECT(ipsecha_member_create(&config, NULL), IPSECHA_E_NULL);

    config.struct_size = sizeof config - 4;
    EXPECT(ipsecha_member_create(&config, &member), IPSECHA_E_STRUCT_SIZE);
    config.struct_size = sizeof config + 8;
    EXPECT(ipsecha_member_create(&config, &member), IPSECHA_E_STRUCT_SIZE);
    config.struct_size = 0;
    EXPECT(ipsecha_member_create(&config, &member), IPSECHA_E_STRUCT_SIZE);

    config = good_config(0, 1);
    EXPECT(ipsecha_member_create(&config, &member), IPSECHA_E_INVALID_ARGUMENT);
    config = good_config(1, 9);
    EXPECT(ipsecha_member_create(&config, &member), IPSECHA_E_INVALID_ARGUMENT);
    config = good_config(2, 1); /* its own ID among the peers */
    EXPECT(ipsecha_member_create(&config, &member), IPSECHA_E_INVALID_ARGUMENT);
    config = good_config(1, 1);
    config.peer_ids = NULL;
    EXPECT(ipsecha_member_create(&config, &member), IPSECHA_E_NULL);
    config = good_config(1, 1);
    config.peer_count = 0;
    EXPECT(ipsecha_member_create(&config, &member), IPSECHA_E_INVALID_ARGUMENT);
    config = good_config(1, 1);
    config.peer_count = (size_t)-1;
    EXPECT(ipsecha_member_create(&config, &member), IPSECHA_E_INVALID_ARGUMENT);
    config = good_config(1, 1);
    config.cluster_key_length = 31;
    EXPECT(ipsecha_member_create(&config, &member), IPSECHA_E_KEY);
    config = good_config(1, 1);
    config.cluster_key = NULL;
    EXPECT(ipsecha_member_create(&config, &member), IPSECHA_E_NULL);
    config = good_config(1, 1);
    config.data_plane = 7;
    EXPECT(ipsecha_member_create(&config, &member), IPSECHA_E_INVALID_ARGUMENT);
    config = good_config(1, 1);
    config.heartbeat_interval_ns = 0;
    EXPECT(ipsecha_member_create(&config, &member), IPSECHA_E_INVALID_ARGUMENT);
    config = good_config(1, 1);
    config.checkpoint_interval_ns = UINT64_MAX;
    EXPECT(ipsecha_member_create(&config, &member), IPSECHA_E_INVALID_ARGUMENT);
    config = good_config(1, 1);
    config.miss_count = 0;
    EXPECT(ipsecha_member_create(&config, &member), IPSECHA_E_INVALID_ARGUMENT);
    config = good_config(1, 1);
    config.inbound_policy = 3;
    EXPECT(ipsecha_member_create(&config, &member), IPSECHA_E_INVALID_ARGUMENT);
    config = good_config(1, 1);
    config.maximum_datagram_size = 100;
    EXPECT(ipsecha_member_create(&config, &member), IPSECHA_E_INVALID_ARGUMENT);
    config = good_config(1, 1);
    config.sync_cipher = 2;
    EXPECT(ipsecha_member_create(&config, &member), IPSECHA_E_INVALID_ARGUMENT);
    const uint64_t bad_last_resort[] = {1, 999999, 3600000000001u, IPSECHA_LAST_RESORT_NEVER - 1};
    for (size_t i = 0; i < sizeof bad_last_resort / sizeof bad_last_resort[0]; i++) {
        config = good_config(1, 1);
        config.last_resort_takeover_ns = bad_last_resort[i];
        EXPECT(ipsecha_member_create(&config, &member), IPSECHA_E_INVALID_ARGUMENT);
    }
    EXPECT_TRUE(member == NULL);
    EXPECT_TRUE(ipsecha_sync_cipher_available(IPSECHA_SYNC_CIPHER_CHACHA20_POLY1305) == 1);
    EXPECT_TRUE(ipsecha_sync_cipher_available(2) == 0);
    if (!ipsecha_sync_cipher_available(IPSECHA_SYNC_CIPHER_AES256_GCM)) {
        config = good_config(1, 1);
        config.sync_cipher = IPSECHA_SYNC_CIPHER_AES256_GCM;
        EXPECT(ipsecha_member_create(&config, &member), IPSECHA_E_INVALID_ARGUMENT);
    }
    /* A caller built against the header before sync_cipher: its size, and whatever its tail
     * padding holds where the field now lies, give a ChaCha20-Poly1305 member. */
    config = good_config(1, 1);
    config.struct_size = IPSECHA_CONFIG_SIZE_WITHOUT_CIPHER;
    config.sync_cipher = 0xA5A5A5A5u;
    config.last_resort_takeover_ns = 0xA5A5A5A5A5A5A5A5u;
    EXPECT(ipsecha_member_create(&config, &member), IPSECHA_OK);
    EXPECT_TRUE(member != NULL);
    ipsecha_member_destroy(member);
    member = NULL;

    ipsecha_member_destroy(NULL);
    ipsecha_config_init(NULL);
    ipsecha_action_init(NULL);
    ipsecha_ike_sa_init(NULL);
    ipsecha_child_sa_init(NULL);
    ipsecha_child_sa_counters_init(NULL);
    ipsecha_member_status_init(NULL);
    ipsecha_ike_sa_takeover_init(NULL);
    ipsecha_child_sa_takeover_init(NULL);
    EXPECT_TRUE(strcmp(ipsecha_member_last_error(NULL), "") == 0);
    EXPECT_TRUE(strcmp(ipsecha_status_name(12345), "IPSECHA_E_UNKNOWN") == 0);
    EXPECT_TRUE(strcmp(ipsecha_status_name(IPSECHA_E_NULL), "IPSECHA_E_NULL") == 0);
    EXPECT_TRUE(ipsecha_abi_version() == IPSECHA_ABI_VERSION);
    EXPECT_TRUE(strlen(ipsecha_version()) > 0);
}

static void null_handles(void) {
    uint64_t value = 0;
    uint8_t byte = 1;
    ipsecha_action action;
    ipsecha_action_init(&action);
    ipsecha_member_status status;
    ipsecha_member_status_init(&status);
    ipsecha_ike_sa ike = good_ike_sa(1);
    ipsecha_child_sa child = good_child_sa(0x1000, 1);
    ipsecha_ike_sa_takeover ike_entry;
    ipsecha_ike_sa_takeover_init(&ike_entry);
    ipsecha_child_sa_takeover child_entry;
    ipsecha_child_sa_takeover_init(&child_entry);
    ipsecha_child_sa_counters counters;
    ipsecha_child_sa_counters_init(&counters);
    size_t refused;
    EXPECT(ipsecha_receive(NULL, &byte, 1, 0), IPSECHA_E_NULL);
    EXPECT(ipsecha_tick(NULL, 0), IPSECHA_E_NULL);
    EXPECT(ipsecha_next_deadline(NULL, &value), IPSECHA_E_NULL);
    EXPECT(ipsecha_signal_member(NULL, IPSECHA_SIGNAL_TAKE_OVER, NULL, 0), IPSECHA_E_NULL);
    uint32_t readiness = 0, electable = 0;
    EXPECT(ipsecha_member_readiness(NULL, &readiness, &electable), IPSECHA_E_NULL);
    EXPECT(ipsecha_member_status_get(NULL, &status), IPSECHA_E_NULL);
    EXPECT(ipsecha_next_action(NULL, &action), IPSECHA_E_NULL);
    EXPECT(ipsecha_takeover_ike_sa(NULL, 0, &ike_entry), IPSECHA_E_NULL);
    EXPECT(ipsecha_takeover_child_sa(NULL, 0, &child_entry), IPSECHA_E_NULL);
    EXPECT(ipsecha_ike_sa_create(NULL, &ike, 0, &value), IPSECHA_E_NULL);
    EXPECT(ipsecha_ike_sa_update_message_ids(NULL, 1, 2, 1, 1, 0, &value), IPSECHA_E_NULL);
    EXPECT(ipsecha_ike_sa_exchange(NULL, 1, 2, 1, 1, 0, 0, &value), IPSECHA_E_NULL);
    EXPECT(ipsecha_ike_sa_rekey(NULL, 1, 2, &ike, 0, &value), IPSECHA_E_NULL);
    EXPECT(ipsecha_ike_sa_undo_rekey(NULL, 1, 2, 0, &value), IPSECHA_E_NULL);
    EXPECT(ipsecha_ike_sa_delete(NULL, 1, 2, 0, &value), IPSECHA_E_NULL);
    EXPECT(ipsecha_child_sa_create(NULL, &child, 0, &value), IPSECHA_E_NULL);
    EXPECT(ipsecha_child_sa_rekey(NULL, 0x1000, &child, 0, &value), IPSECHA_E_NULL);
    EXPECT(ipsecha_child_sa_delete(NULL, 0x1000, 0, &value), IPSECHA_E_NULL);
    EXPECT(ipsecha_outbound_sequence_number(NULL, 0x1000, 1, &value, NULL), IPSECHA_E_NULL);
    EXPECT(ipsecha_inbound_check(NULL, 0x1000, 1, &value), IPSECHA_E_NULL);
    EXPECT(ipsecha_inbound_commit(NULL, 0x1000, 1, 1), IPSECHA_E_NULL);
    EXPECT(ipsecha_observe_counters(NULL, &counters, 1, &refused), IPSECHA_E_NULL);
    EXPECT(ipsecha_set_counter_report_interval(NULL, 0), IPSECHA_E_NULL);
    EXPECT(ipsecha_child_sa_counters_get(NULL, 0x1000, &counters), IPSECHA_E_NULL);
}

/* An active member with one IKE SA (initiator SPI 1) and one Child SA (inbound SPI 0x1000). */
static void active_member(void) {
    ipsecha_config config = good_config(1, 1);
    ipsecha_member *member = NULL;
    EXPECT(ipsecha_member_create(&config, &member), IPSECHA_OK);
    if (!member) return;
    uint64_t token = 0, value = 0;
    ipsecha_ike_sa ike = good_ike_sa(1);
    ipsecha_child_sa child = good_child_sa(0x1000, 1);
    EXPECT(ipsecha_ike_sa_create(member, &ike, 0, &token), IPSECHA_OK);
    EXPECT(ipsecha_child_sa_create(member, &child, 0, &token), IPSECHA_OK);
    uint64_t last_token = token;

    /* Inputs. */
    uint8_t garbage[64] = {0};
    EXPECT(ipsecha_receive(member, NULL, 10, 0), IPSECHA_E_NULL);
    EXPECT(ipsecha_receive(member, garbage, 0, 0), IPSECHA_E_INVALID_ARGUMENT);
    EXPECT(ipsecha_receive(member, garbage, 70000, 0), IPSECHA_E_INVALID_ARGUMENT);
    EXPECT(ipsecha_receive(member, garbage, sizeof garbage, 0), IPSECHA_OK); /* forged: dropped, no error */
    EXPECT(ipsecha_next_deadline(member, NULL), IPSECHA_E_NULL);
    EXPECT(ipsecha_signal_member(member, 0, NULL, 0), IPSECHA_E_INVALID_ARGUMENT);
    EXPECT(ipsecha_signal_member(member, 99, "x", 0), IPSECHA_E_INVALID_ARGUMENT);
    EXPECT(ipsecha_signal_member(member, IPSECHA_SIGNAL_VRRP_MASTER, NULL, 0), IPSECHA_OK); /* changes nothing */
    /* No standby is current (none ever answered): the switchover is refused, nothing changes. */
    EXPECT(ipsecha_signal_member(member, IPSECHA_SIGNAL_SWITCH_OVER, NULL, 0), IPSECHA_E_STATE);
    uint32_t readiness = 0, electable = 0;
    EXPECT(ipsecha_member_readiness(member, NULL, &electable), IPSECHA_E_NULL);
    EXPECT(ipsecha_member_readiness(member, &readiness, &electable), IPSECHA_OK);
    EXPECT_TRUE(readiness == IPSECHA_READINESS_ACTIVE && electable == 1);
    EXPECT_TRUE(strlen(ipsecha_member_last_error(member)) > 0);

    /* Structures of the wrong size, NULL outputs. */
    ipsecha_member_status status;
    ipsecha_member_status_init(&status);
    EXPECT(ipsecha_member_status_get(member, NULL), IPSECHA_E_NULL);
    status.struct_size = 4;
    EXPECT(ipsecha_member_status_get(member, &status), IPSECHA_E_STRUCT_SIZE);
    ipsecha_action action;
    ipsecha_action_init(&action);
    EXPECT(ipsecha_next_action(member, NULL), IPSECHA_E_NULL);
    action.struct_size = 1;
    EXPECT(ipsecha_next_action(member, &action), IPSECHA_E_STRUCT_SIZE);
    ike.struct_size = (uint32_t)sizeof ike - 1;
    EXPECT(ipsecha_ike_sa_create(member, &ike, 0, &token), IPSECHA_E_STRUCT_SIZE);
    EXPECT(ipsecha_ike_sa_create(member, NULL, 0, &token), IPSECHA_E_NULL);
    child.struct_size = 12;
    EXPECT(ipsecha_child_sa_create(member, &child, 0, &token), IPSECHA_E_STRUCT_SIZE);
    EXPECT(ipsecha_child_sa_create(member, NULL, 0, &token), IPSECHA_E_NULL);
    EXPECT_TRUE(token == last_token); /* no token for a refused change */

    /* IKE SAs: bad values, unknown and duplicate SPIs. */
    ike = good_ike_sa(1);
    EXPECT(ipsecha_ike_sa_create(member, &ike, 0, &token), IPSECHA_E_EXISTS);
    ike = good_ike_sa(0);
    EXPECT(ipsecha_ike_sa_create(member, &ike, 0, &token), IPSECHA_E_INVALID_ARGUMENT);
    ike = good_ike_sa(5);
    ike.keys_length = 10;
    EXPECT(ipsecha_ike_sa_create(member, &ike, 0, &token), IPSECHA_E_INVALID_ARGUMENT);
    ike = good_ike_sa(5);
    ike.key_lengths[3] = (size_t)-1;
    EXPECT(ipsecha_ike_sa_create(member, &ike, 0, &token), IPSECHA_E_INVALID_ARGUMENT);
    ike = good_ike_sa(5);
    ike.keys = NULL;
    EXPECT(ipsecha_ike_sa_create(member, &ike, 0, &token), IPSECHA_E_NULL);
    ike = good_ike_sa(5);
    ike.keys_length = (size_t)1 << 40;
    EXPECT(ipsecha_ike_sa_create(member, &ike, 0, &token), IPSECHA_E_INVALID_ARGUMENT);
    ike = good_ike_sa(5);
    ike.address_family = 5;
    EXPECT(ipsecha_ike_sa_create(member, &ike, 0, &token), IPSECHA_E_INVALID_ARGUMENT);
    ike = good_ike_sa(5);
    ike.next_request_id = UINT64_MAX;
    EXPECT(ipsecha_ike_sa_create(member, &ike, 0, &token), IPSECHA_E_INVALID_ARGUMENT);
    EXPECT(ipsecha_ike_sa_update_message_ids(member, 9, 9, 1, 1, 0, &token), IPSECHA_E_UNKNOWN_IKE_SA);
    EXPECT(ipsecha_ike_sa_update_message_ids(member, 1, 2, UINT64_MAX, 1, 0, &token), IPSECHA_E_INVALID_ARGUMENT);
    EXPECT(ipsecha_ike_sa_exchange(member, 9, 9, 1, 1, 0, 0, &token), IPSECHA_E_UNKNOWN_IKE_SA);
    ike = good_ike_sa(5);
    EXPECT(ipsecha_ike_sa_rekey(member, 9, 9, &ike, 0, &token), IPSECHA_E_UNKNOWN_IKE_SA);
    EXPECT(ipsecha_ike_sa_rekey(member, 1, 2, NULL, 0, &token), IPSECHA_E_NULL);
    EXPECT(ipsecha_ike_sa_undo_rekey(member, 9, 9, 0, &token), IPSECHA_E_UNKNOWN_IKE_SA);
    EXPECT(ipsecha_ike_sa_undo_rekey(member, 1, 2, 0, &token), IPSECHA_E_STATE); /* not made by a rekey */
    EXPECT(ipsecha_ike_sa_delete(member, 9, 9, 0, &token), IPSECHA_E_UNKNOWN_IKE_SA);

    /* Child SAs. */
    child = good_child_sa(0x1000, 1);
    EXPECT(ipsecha_child_sa_create(member, &child, 0, &token), IPSECHA_E_EXISTS);
    child = good_child_sa(0x2000, 9);
    EXPECT(ipsecha_child_sa_create(member, &child, 0, &token), IPSECHA_E_UNKNOWN_IKE_SA);
    child = good_child_sa(200, 1);
    EXPECT(ipsecha_child_sa_create(member, &child, 0, &token), IPSECHA_E_INVALID_ARGUMENT);
    child = good_child_sa(0x2000, 1);
    child.local_selector_count = 0;
    EXPECT(ipsecha_child_sa_create(member, &child, 0, &token), IPSECHA_E_INVALID_ARGUMENT);
    child = good_child_sa(0x2000, 1);
    child.remote_selector_count = 25;
    EXPECT(ipsecha_child_sa_create(member, &child, 0, &token), IPSECHA_E_INVALID_ARGUMENT);
    child = good_child_sa(0x2000, 1);
    child.remote_selectors = NULL;
    EXPECT(ipsecha_child_sa_create(member, &child, 0, &token), IPSECHA_E_NULL);
    child = good_child_sa(0x2000, 1);
    child.replay_window_size = 1;
    EXPECT(ipsecha_child_sa_create(member, &child, 0, &token), IPSECHA_E_INVALID_ARGUMENT);
    child = good_child_sa(0x2000, 1);
    child.soft_seconds = 100;
    child.hard_seconds = 10;
    EXPECT(ipsecha_child_sa_create(member, &child, 0, &token), IPSECHA_E_INVALID_ARGUMENT);
    child = good_child_sa(0x2000, 1);
    child.inbound_encryption_key_length = 100000;
    EXPECT(ipsecha_child_sa_create(member, &child, 0, &token), IPSECHA_E_INVALID_ARGUMENT);
    ipsecha_traffic_selector backwards = {4, 0, 10, 5, {10, 0, 0, 0}, {10, 0, 0, 1}};
    child = good_child_sa(0x2000, 1);
    child.local_selectors = &backwards;
    EXPECT(ipsecha_child_sa_create(member, &child, 0, &token), IPSECHA_E_INVALID_ARGUMENT);
    child = good_child_sa(0x2000, 1);
    EXPECT(ipsecha_child_sa_rekey(member, 0x9999, &child, 0, &token), IPSECHA_E_UNKNOWN_CHILD_SA);
    EXPECT(ipsecha_child_sa_rekey(member, 0x1000, NULL, 0, &token), IPSECHA_E_NULL);
    child = good_child_sa(0x1000, 1);
    EXPECT(ipsecha_child_sa_rekey(member, 0x1000, &child, 0, &token), IPSECHA_E_EXISTS); /* new SPI in use */
    EXPECT(ipsecha_child_sa_delete(member, 0x9999, 0, &token), IPSECHA_E_UNKNOWN_CHILD_SA);
    EXPECT_TRUE(token == last_token);

    /* Counters: unknown SPIs, replays, the other data plane's calls. */
    EXPECT(ipsecha_outbound_sequence_number(member, 0x9999, 1, &value, NULL), IPSECHA_E_UNKNOWN_CHILD_SA);
    EXPECT(ipsecha_outbound_sequence_number(member, 0x1000, 1, NULL, NULL), IPSECHA_E_NULL);
    EXPECT(ipsecha_inbound_check(member, 0x9999, 1, &value), IPSECHA_E_UNKNOWN_CHILD_SA);
    EXPECT(ipsecha_inbound_check(member, 0x1000, 1, NULL), IPSECHA_E_NULL);
    EXPECT(ipsecha_inbound_check(member, 0x1000, 0, &value), IPSECHA_E_STALE);
    EXPECT(ipsecha_inbound_check(member, 0x1000, 1, &value), IPSECHA_OK);
    EXPECT(ipsecha_inbound_commit(member, 0x1000, value, 100), IPSECHA_OK);
    EXPECT(ipsecha_inbound_commit(member, 0x1000, value, 100), IPSECHA_E_REPLAYED);
    EXPECT(ipsecha_inbound_check(member, 0x1000, 1, &value), IPSECHA_E_REPLAYED);
    EXPECT(ipsecha_inbound_commit(member, 0x9999, 2, 100), IPSECHA_E_UNKNOWN_CHILD_SA);
    ipsecha_child_sa_counters counters;
    ipsecha_child_sa_counters_init(&counters);
    size_t refused = 0;
    EXPECT(ipsecha_observe_counters(member, &counters, 1, &refused), IPSECHA_E_DATA_PLANE);
    EXPECT(ipsecha_set_counter_report_interval(member, 1000000000), IPSECHA_E_DATA_PLANE);
    EXPECT(ipsecha_child_sa_counters_get(member, 0x9999, &counters), IPSECHA_E_UNKNOWN_CHILD_SA);
    EXPECT(ipsecha_child_sa_counters_get(member, 0x1000, NULL), IPSECHA_E_NULL);
    counters.struct_size = 3;
    EXPECT(ipsecha_child_sa_counters_get(member, 0x1000, &counters), IPSECHA_E_STRUCT_SIZE);
    ipsecha_child_sa_counters_init(&counters);
    EXPECT(ipsecha_child_sa_counters_get(member, 0x1000, &counters), IPSECHA_OK);
    EXPECT_TRUE(counters.inbound_highest == 1 && counters.outbound_last_sent == 0);

    /* No takeover yet. */
    ipsecha_ike_sa_takeover ike_entry;
    ipsecha_ike_sa_takeover_init(&ike_entry);
    EXPECT(ipsecha_takeover_ike_sa(member, 0, &ike_entry), IPSECHA_E_NOT_FOUND);
    EXPECT(ipsecha_takeover_ike_sa(member, 0, NULL), IPSECHA_E_NULL);
    ike_entry.struct_size = 8;
    EXPECT(ipsecha_takeover_ike_sa(member, 0, &ike_entry), IPSECHA_E_STRUCT_SIZE);
    ipsecha_child_sa_takeover child_entry;
    ipsecha_child_sa_takeover_init(&child_entry);
    EXPECT(ipsecha_takeover_child_sa(member, (size_t)-1, &child_entry), IPSECHA_E_NOT_FOUND);

    /* After all that: still one IKE SA and one Child SA, and the member works. */
    ipsecha_member_status_init(&status);
    EXPECT(ipsecha_member_status_get(member, &status), IPSECHA_OK);
    EXPECT_TRUE(status.active == 1 && status.ike_sa_count == 1 && status.child_sa_count == 1);
    EXPECT(ipsecha_outbound_sequence_number(member, 0x1000, 1, &value, NULL), IPSECHA_OK);
    EXPECT_TRUE(value == 1);
    EXPECT(ipsecha_tick(member, 1000000), IPSECHA_OK);
    ipsecha_action_init(&action);
    int drained;
    while ((drained = ipsecha_next_action(member, &action)) == IPSECHA_OK) {
    }
    EXPECT(drained, IPSECHA_NO_ACTION);
    ipsecha_member_destroy(member);
}

/* A standby refuses changes and per-packet calls; an observed data plane refuses the
 * userspace calls and bad counter arrays. */
static void standby_and_observed(void) {
    ipsecha_config config = good_config(1, 2);
    ipsecha_member *standby = NULL;
    EXPECT(ipsecha_member_create(&config, &standby), IPSECHA_OK);
    if (!standby) return;
    uint64_t token = 0, value = 0;
    ipsecha_ike_sa ike = good_ike_sa(1);
    EXPECT(ipsecha_ike_sa_create(standby, &ike, 0, &token), IPSECHA_E_NOT_ACTIVE);
    EXPECT(ipsecha_ike_sa_exchange(standby, 1, 2, 1, 1, 0, 0, &token), IPSECHA_E_NOT_ACTIVE);
    EXPECT(ipsecha_outbound_sequence_number(standby, 0x1000, 1, &value, NULL), IPSECHA_E_NOT_ACTIVE);
    EXPECT(ipsecha_signal_member(standby, IPSECHA_SIGNAL_STEP_DOWN, "nothing to step down from", 0), IPSECHA_OK);
    EXPECT(ipsecha_signal_member(standby, IPSECHA_SIGNAL_SWITCH_OVER, NULL, 0), IPSECHA_E_NOT_ACTIVE);
    uint32_t readiness = 0, electable = 1;
    EXPECT(ipsecha_member_readiness(standby, &readiness, &electable), IPSECHA_OK);
    EXPECT_TRUE(readiness == IPSECHA_READINESS_INCOMPLETE && electable == 0); /* never heard the active member */
    ipsecha_member_destroy(standby);

    config = good_config(1, 1);
    config.data_plane = IPSECHA_DATA_PLANE_OBSERVED;
    ipsecha_member *member = NULL;
    EXPECT(ipsecha_member_create(&config, &member), IPSECHA_OK);
    if (!member) return;
    ipsecha_child_sa child = good_child_sa(0x1000, 1);
    EXPECT(ipsecha_ike_sa_create(member, &ike, 0, &token), IPSECHA_OK);
    EXPECT(ipsecha_child_sa_create(member, &child, 0, &token), IPSECHA_OK);
    EXPECT(ipsecha_outbound_sequence_number(member, 0x1000, 1, &value, NULL), IPSECHA_E_DATA_PLANE);
    EXPECT(ipsecha_inbound_check(member, 0x1000, 1, &value), IPSECHA_E_DATA_PLANE);
    EXPECT(ipsecha_inbound_commit(member, 0x1000, 1, 1), IPSECHA_E_DATA_PLANE);
    EXPECT(ipsecha_set_counter_report_interval(member, 3600000000001ull), IPSECHA_E_INVALID_ARGUMENT);
    EXPECT(ipsecha_set_counter_report_interval(member, 1000000000), IPSECHA_OK); /* a 1 s timer threshold */
    ipsecha_child_sa_counters observed[3];
    for (int i = 0; i < 3; i++) ipsecha_child_sa_counters_init(&observed[i]);
    observed[0].inbound_spi = 0x1000;
    observed[0].outbound_last_sent = 500;
    observed[0].inbound_highest = 70;
    observed[1].inbound_spi = 0x9999;                   /* unknown: skipped */
    observed[2].inbound_spi = 0x1000;
    observed[2].outbound_last_sent = (uint64_t)1 << 62; /* ESN space is 2^64 - 1: fine */
    size_t refused = 99;
    EXPECT(ipsecha_observe_counters(member, NULL, 1, &refused), IPSECHA_E_NULL);
    EXPECT(ipsecha_observe_counters(member, observed, (size_t)-1, &refused), IPSECHA_E_INVALID_ARGUMENT);
    observed[1].struct_size = 8;
    EXPECT(ipsecha_observe_counters(member, observed, 3, &refused), IPSECHA_E_STRUCT_SIZE);
    ipsecha_child_sa_counters held;
    ipsecha_child_sa_counters_init(&held);
    EXPECT(ipsecha_child_sa_counters_get(member, 0x1000, &held), IPSECHA_OK);
    EXPECT_TRUE(held.outbound_last_sent == 0); /* the refused array changed nothing */
    observed[1].struct_size = sizeof observed[1];
    EXPECT(ipsecha_observe_counters(member, observed, 2, &refused), IPSECHA_OK);
    EXPECT_TRUE(refused == 1);
    EXPECT(ipsecha_child_sa_counters_get(member, 0x1000, &held), IPSECHA_OK);
    EXPECT_TRUE(held.outbound_last_sent == 500 && held.inbound_highest == 70);
    observed[0].outbound_last_sent = 10; /* behind: ignored, forward only */
    EXPECT(ipsecha_observe_counters(member, observed, 1, NULL), IPSECHA_OK);
    EXPECT(ipsecha_child_sa_counters_get(member, 0x1000, &held), IPSECHA_OK);
    EXPECT_TRUE(held.outbound_last_sent == 500);
    ipsecha_member_destroy(member);
}

/* When a standby that never hears its active member takes over with nothing (as the last
 * resort), ticked every `step_ns` of a virtual clock from 1 s to 1 s + `for_ns`: how long after
 * its first tick, or UINT64_MAX for never. */
static uint64_t lone_standby_takeover(uint64_t last_resort_ns, uint64_t step_ns, uint64_t for_ns) {
    ipsecha_config config = good_config(1, 2);
    config.last_resort_takeover_ns = last_resort_ns;
    ipsecha_member *standby = NULL;
    EXPECT(ipsecha_member_create(&config, &standby), IPSECHA_OK);
    if (!standby) return 0;
    ipsecha_action action;
    ipsecha_action_init(&action);
    const uint64_t start = 1000000000u;
    uint64_t took = UINT64_MAX;
    for (uint64_t now = start; took == UINT64_MAX && now <= start + for_ns; now += step_ns) {
        EXPECT(ipsecha_tick(standby, now), IPSECHA_OK);
        while (ipsecha_next_action(standby, &action) == IPSECHA_OK)
            if (action.kind == IPSECHA_ACTION_TOOK_OVER) took = now - start;
    }
    ipsecha_member_destroy(standby);
    return took;
}

/* last_resort_takeover_ns: the default (also for 0, what callers of the header with a zero
 * `reserved` there pass), a longer wait for an active member slow to start, and never. */
static void last_resort_takeover(void) {
    ipsecha_config defaults;
    ipsecha_config_init(&defaults);
    EXPECT_TRUE(defaults.last_resort_takeover_ns == 1000000000u);
    const uint64_t step = 100000000u;
    EXPECT_TRUE(lone_standby_takeover(defaults.last_resort_takeover_ns, step, 10000000000u) == 1000000000u);
    EXPECT_TRUE(lone_standby_takeover(0, step, 10000000000u) == 1000000000u);
    EXPECT_TRUE(lone_standby_takeover(5000000000u, step, 10000000000u) == 5000000000u);
    EXPECT_TRUE(lone_standby_takeover(IPSECHA_LAST_RESORT_NEVER, 60000000000u, 7200000000000u) == UINT64_MAX);
}

/* ipsecha_config_init writes no further than the caller's structure. A program built against
 * the previous release's header calls the function (not this header's macro) on its 104-byte
 * ipsecha_config, often on its stack with something else right behind: the bytes after it
 * stay as they were, and the structure it gets makes a ChaCha20-Poly1305 member. */
static void configuration_sizes(void) {
    union {
        ipsecha_config config;
        unsigned char bytes[sizeof(ipsecha_config) + 16];
    } previous;
    memset(previous.bytes, 0xA5, sizeof previous.bytes);
    (ipsecha_config_init)(&previous.config);
    int untouched = 1;
    for (size_t b = IPSECHA_CONFIG_SIZE_WITHOUT_CIPHER; b < sizeof previous.bytes; b++)
        untouched &= previous.bytes[b] == 0xA5;
    EXPECT_TRUE(untouched);
    EXPECT_TRUE(previous.config.struct_size == IPSECHA_CONFIG_SIZE_WITHOUT_CIPHER);
    EXPECT_TRUE(previous.config.maximum_datagram_size == 1400 && previous.config.miss_count == 3);
    ipsecha_config filled = good_config(1, 1);
    memcpy(previous.bytes + 4, (const unsigned char *)&filled + 4, IPSECHA_CONFIG_SIZE_WITHOUT_CIPHER - 4);
    ipsecha_member *member = NULL;
    EXPECT(ipsecha_member_create(&previous.config, &member), IPSECHA_OK);
    ipsecha_member_destroy(member);

    /* This header's macro fills the whole structure; other sizes are refused untouched. */
    memset(previous.bytes, 0xA5, sizeof previous.bytes);
    ipsecha_config_init(&previous.config);
    EXPECT_TRUE(previous.config.struct_size == sizeof(ipsecha_config));
    EXPECT_TRUE(previous.config.last_resort_takeover_ns == 1000000000u);
    EXPECT_TRUE(previous.bytes[sizeof(ipsecha_config)] == 0xA5);
    memset(previous.bytes, 0xA5, sizeof previous.bytes);
    EXPECT(ipsecha_config_init_size(&previous.config, sizeof(ipsecha_config) + 8), IPSECHA_E_STRUCT_SIZE);
    EXPECT(ipsecha_config_init_size(&previous.config, 8), IPSECHA_E_STRUCT_SIZE);
    EXPECT_TRUE(previous.bytes[0] == 0xA5 && previous.bytes[sizeof(ipsecha_config) - 1] == 0xA5);
    EXPECT(ipsecha_config_init_size(NULL, sizeof(ipsecha_config)), IPSECHA_E_NULL);
}

static int log_lines = 0;
static void count_line(void *context, int level, const char *label, const char *message) {
    (void)level;
    if (context == &log_lines && strncmp(label, "ipsecha.", 8) == 0 && strlen(message) > 0) log_lines++;
}

/* The log function gets the lines of members made before it was set, at its level. */
static void logs(void) {
    EXPECT(ipsecha_set_log_function(count_line, &log_lines, 7), IPSECHA_E_INVALID_ARGUMENT);
    EXPECT(ipsecha_set_log_function(count_line, &log_lines, -1), IPSECHA_E_INVALID_ARGUMENT);
    ipsecha_config config = good_config(1, 1);
    ipsecha_member *member = NULL;
    EXPECT(ipsecha_member_create(&config, &member), IPSECHA_OK);
    if (!member) return;
    EXPECT(ipsecha_set_log_function(count_line, &log_lines, IPSECHA_LOG_CRITICAL), IPSECHA_OK);
    uint8_t forged[64];
    memset(forged, 0x5a, sizeof forged);
    EXPECT(ipsecha_receive(member, forged, sizeof forged, 0), IPSECHA_OK);
    EXPECT_TRUE(log_lines == 0);
    EXPECT(ipsecha_set_log_function(count_line, &log_lines, IPSECHA_LOG_TRACE), IPSECHA_OK);
    EXPECT(ipsecha_receive(member, forged, sizeof forged, 0), IPSECHA_OK); /* logged at debug */
    EXPECT_TRUE(log_lines > 0);
    EXPECT(ipsecha_set_log_function(NULL, NULL, IPSECHA_LOG_INFO), IPSECHA_OK);
    ipsecha_member_destroy(member);
}

int main(void) {
    for (size_t b = 0; b < sizeof key; b++) key[b] = (uint8_t)(0xa0 + b);
    configuration_and_lifecycle();
    null_handles();
    active_member();
    standby_and_observed();
    last_resort_takeover();
    configuration_sizes();
    logs();
    printf("%d checks, %d failed\n", checks, failures);
    return failures == 0 ? 0 : 1;
}
