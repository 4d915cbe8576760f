/*
 * ipsecha.h: the C interface of ipsec-ha (libipsecha).
 *
 * One cluster member of an IKEv2/IPsec gateway cluster as a state machine that does no I/O:
 * the daemon feeds it the synch datagrams it received, the time, and the changes it makes to
 * its IKE SAs and Child SAs; the member says what to do next (datagrams to send to the other
 * members, changes the standbys now hold, a takeover and its plan, a step-down) and when to
 * call it again. It is the Swift package's ClusterMember behind a C ABI; Docs/EmbeddingFromC.md
 * walks through a daemon's use of it.
 *
 * Conventions
 * - Every function that can fail returns an int: IPSECHA_OK (0), or a negative ipsecha_status
 *   that ipsecha_status_name() names; ipsecha_member_last_error() says more, in a sentence.
 *   A call that fails changes nothing, unless its description says otherwise.
 * - Every structure passed in or out starts with struct_size, which the caller sets to
 *   sizeof(the structure) (the *_init functions do it): a library of a later ABI tells by it
 *   which fields the caller knows, and refuses sizes it does not know (IPSECHA_E_STRUCT_SIZE).
 *   ipsecha_traffic_selector is the exception: frozen, an element of arrays.
 * - Ownership: the library never keeps a pointer it was given; it copies what it needs during
 *   the call (the caller may wipe its keys right after). Pointers it hands out (a datagram, a
 *   reason, a list of SPIs in an ipsecha_action; ipsecha_member_last_error()) point into the
 *   member and stay valid until the next call that takes the member as non-const, or its
 *   destruction. Static strings (ipsecha_status_name(), ipsecha_version(), reason texts in
 *   the plan) live as long as the library.
 * - Time is in nanoseconds on the cluster's time base, as every member sees it: CLOCK_REALTIME
 *   on members whose clocks are synchronised (the takeover plan compares a checkpoint's time
 *   with the time of the takeover), or CLOCK_MONOTONIC for members on one host.
 * - Thread safety: a member is not thread-safe. Calls on one member must not overlap: call it
 *   from one thread, or hold a lock of your own around every call. Different members are
 *   independent. ipsecha_version(), ipsecha_abi_version(), ipsecha_status_name() and the
 *   *_init functions may be called from any thread at any time.
 * - No call blocks, reads a clock, opens a socket or starts a thread. Nothing crosses the
 *   boundary but C types: no exceptions, no Swift values; bad arguments give error codes.
 *
 * C11; the header compiles with -std=c11 -Wall -Wextra -Werror -pedantic, and as C++.
 */
#ifndef IPSECHA_H
#define IPSECHA_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ------------------------------------------------------------------------------------------ */
/* Versions                                                                                   */

/* The ABI this header describes. A library with another ABI version may lay out the
 * structures differently: compare with ipsecha_abi_version() at start-up. */
#define IPSECHA_ABI_VERSION 1

/* The ABI of the library loaded at run time. */
uint32_t ipsecha_abi_version(void);

/* The library's release, as "major.minor.patch" (a static string). */
const char *ipsecha_version(void);

/* ------------------------------------------------------------------------------------------ */
/* Status codes                                                                               */

typedef enum ipsecha_status {
    IPSECHA_OK = 0,
    /* ipsecha_next_action(): nothing to do; sleep until the next deadline or datagram. */
    IPSECHA_NO_ACTION = 1,
    /* A required pointer (a member, a structure, an output) was NULL. */
    IPSECHA_E_NULL = -1,
    /* A structure's struct_size is not one this library knows. */
    IPSECHA_E_STRUCT_SIZE = -2,
    /* An argument is out of range or inconsistent (an SPI of 0 to 255, a length that does not
     * add up, an unknown enumeration value, an interval of 0, ...). */
    IPSECHA_E_INVALID_ARGUMENT = -3,
    /* A caller's buffer is too small; the size needed is reported where the call says. */
    IPSECHA_E_BUFFER_TOO_SMALL = -4,
    /* Only the active member changes the state or sends: a standby's state comes from it. */
    IPSECHA_E_NOT_ACTIVE = -5,
    /* No IKE SA with this SPI pair. */
    IPSECHA_E_UNKNOWN_IKE_SA = -6,
    /* No Child SA with this inbound SPI. */
    IPSECHA_E_UNKNOWN_CHILD_SA = -7,
    /* The IKE SA's SPI pair, or the Child SA's inbound SPI, is already in use. */
    IPSECHA_E_EXISTS = -8,
    /* The change is not possible in the current state (for instance undoing a rekey whose
     * predecessor is gone); ipsecha_member_last_error() says why. */
    IPSECHA_E_STATE = -9,
    /* A call for the other data-plane shape: per-packet counter calls on a member whose data
     * plane keeps the counters, or observed counters on a member that keeps them itself. */
    IPSECHA_E_DATA_PLANE = -10,
    /* The cluster key is not 32 bytes, or the system's secure memory or random source failed. */
    IPSECHA_E_KEY = -11,
    /* No such entry: a plan index past the end, or no takeover yet. */
    IPSECHA_E_NOT_FOUND = -12,
    /* The Child SA's outbound sequence numbers are used up, or it awaits a rekey after a
     * takeover (IPSECHA_ACTION_TOOK_OVER's rekey_spis): rekey it. */
    IPSECHA_E_SEQUENCE_EXHAUSTED = -13,
    /* The inbound packet's sequence number was seen already: drop it (RFC 4303 3.4.3). */
    IPSECHA_E_REPLAYED = -14,
    /* The inbound packet's sequence number is below the replay window, or 0, or its Child SA
     * awaits a rekey after a takeover: drop it. */
    IPSECHA_E_STALE = -15
} ipsecha_status;

/* The name of a status code ("IPSECHA_E_NULL"), or "IPSECHA_E_UNKNOWN" for a value this
 * library does not define. Never NULL; a static string. */
const char *ipsecha_status_name(int status);

/* ------------------------------------------------------------------------------------------ */
/* Logs                                                                                       */

typedef enum ipsecha_log_level {
    IPSECHA_LOG_TRACE = 0,
    IPSECHA_LOG_DEBUG = 1,
    IPSECHA_LOG_INFO = 2,
    IPSECHA_LOG_NOTICE = 3,
    IPSECHA_LOG_WARNING = 4,
    IPSECHA_LOG_ERROR = 5,
    IPSECHA_LOG_CRITICAL = 6
} ipsecha_log_level;

/* Receives one log line: its level, the part of the library it comes from ("ipsecha.sync.channel")
 * and the message with its details ("synch records missing, asking again missing=[3]"). Both
 * strings are valid during the call only. Called on the thread of the call that logs. */
typedef void (*ipsecha_log_function)(void *context, int level, const char *label, const char *message);

/* Sends the library's log lines at minimum_level (an ipsecha_log_level) or above to function,
 * for every member, from now on; NULL sends them to standard error ("level label: message"),
 * which is where they go, at IPSECHA_LOG_INFO and above, until a call. Process-wide and
 * thread-safe; context is passed back as is. IPSECHA_E_INVALID_ARGUMENT for an unknown level. */
int ipsecha_set_log_function(ipsecha_log_function function, void *context, int minimum_level);

/* ------------------------------------------------------------------------------------------ */
/* Configuration and lifecycle                                                                */

/* Who keeps the Child SAs' ESP counters. */
typedef enum ipsecha_data_plane {
    /* ESP runs in the daemon's own process: it takes every outbound sequence number from the
     * member (ipsecha_outbound_sequence_number) and checks every inbound one with it
     * (ipsecha_inbound_check, ipsecha_inbound_commit). */
    IPSECHA_DATA_PLANE_USERSPACE = 0,
    /* ESP runs in a kernel (Linux XFRM) or a NIC that keeps the counters itself: the daemon
     * reads them there and reports them (ipsecha_observe_counters) before each tick, and after
     * a takeover writes the plan's counters there (ipsecha_child_sa_counters_get). */
    IPSECHA_DATA_PLANE_OBSERVED = 1
} ipsecha_data_plane;

/* How a takeover rebuilds the inbound replay windows. */
typedef enum ipsecha_inbound_policy {
    /* Count everything up to the checkpoint plus an advance as seen; safe without the peer. */
    IPSECHA_INBOUND_CONSERVATIVE = 0,
    /* Ask the peer to jump its counters (RFC 6311 IPSEC_REPLAY_COUNTER_SYNC) where the IKE SA
     * negotiated it; conservative elsewhere. */
    IPSECHA_INBOUND_REPLAY_COUNTER_SYNC = 1,
    /* UNSAFE: resume at the checkpoint with nothing below it seen (replays accepted once). */
    IPSECHA_INBOUND_PERMISSIVE_UNSAFE = 2
} ipsecha_inbound_policy;

/* The synch channel's AEAD, the same on every member of a cluster: a member configured apart
 * drops the others' datagrams, never establishes, and logs why. */
typedef enum ipsecha_sync_cipher {
    /* ChaCha20-Poly1305: every CPU (the default). */
    IPSECHA_SYNC_CIPHER_CHACHA20_POLY1305 = 0,
    /* AES-256-GCM: faster where the CPU has AES and carry-less multiplication instructions
     * (ipsecha_sync_cipher_available); a member refuses it on a CPU without them. */
    IPSECHA_SYNC_CIPHER_AES256_GCM = 1
} ipsecha_sync_cipher;

/* Nonzero when this CPU runs `cipher` (an ipsecha_sync_cipher), 0 otherwise. */
int ipsecha_sync_cipher_available(uint32_t cipher);

/* The size of ipsecha_config before sync_cipher was added: a caller built against that header
 * passes it, and gets ChaCha20-Poly1305. */
#define IPSECHA_CONFIG_SIZE_WITHOUT_CIPHER 104

typedef struct ipsecha_config {
    uint32_t struct_size;
    /* The cluster every synch datagram names. */
    uint32_t cluster_id;
    /* This member, and the member active at the start (this one if equal). Not 0. */
    uint16_t member_id;
    uint16_t active_member_id;
    /* This member's role epoch (default 1); a restarted member may reuse it. */
    uint32_t epoch;
    /* The other members: peer_count IDs (1 to 64), none equal to member_id. */
    const uint16_t *peer_ids;
    size_t peer_count;
    /* The cluster key, 32 bytes shared by every member (copied into guarded memory). */
    const uint8_t *cluster_key;
    size_t cluster_key_length;
    /* ipsecha_data_plane. */
    uint32_t data_plane;
    /* Nonzero: keepalived (VRRP) decides who is active; a standby takes over only on
     * IPSECHA_SIGNAL_VRRP_MASTER. Zero: the member's failure detector decides. */
    uint32_t follows_vrrp;
    /* Counters are checkpointed at least this often (default 50 ms) and after this many
     * packets of a Child SA (default 4,096). */
    uint64_t checkpoint_interval_ns;
    uint64_t checkpoint_packets;
    /* Synch heartbeats (default 50 ms); a ready standby declares the active member failed
     * after miss_count of them are missed (default 3). */
    uint64_t heartbeat_interval_ns;
    uint32_t miss_count;
    /* ipsecha_inbound_policy (default IPSECHA_INBOUND_CONSERVATIVE). */
    uint32_t inbound_policy;
    /* A token is released at the latest this long after its change even if a standby never
     * acknowledges it (default 2 s; 0: never without the standbys). */
    uint64_t release_deadline_ns;
    /* Largest synch datagram sent or accepted (default 1,400 bytes; 512 to 65,507). */
    uint32_t maximum_datagram_size;
    /* ipsecha_sync_cipher (default IPSECHA_SYNC_CIPHER_CHACHA20_POLY1305). */
    uint32_t sync_cipher;
    /* A standby that holds no complete copy takes over with what it holds (perhaps nothing)
     * once no member has said it is active and nothing came from the active member for this
     * long since its first tick, and no member with a lower ID is heard: the way back to
     * service after every member restarted, or after the active member died while the only
     * standby was resyncing. With follows_vrrp it only says it is electable
     * (IPSECHA_READINESS_LAST_RESORT). Default 1 s; 1 ms to 1 hour, or
     * IPSECHA_LAST_RESORT_NEVER to wait for an operator. Set it above the time the active
     * member may take to start, when the standbys start first. 0 means the default: this
     * field was a zero `reserved` before. */
    uint64_t last_resort_takeover_ns;
} ipsecha_config;

/* last_resort_takeover_ns: a standby never takes over without a complete copy on its own. */
#define IPSECHA_LAST_RESORT_NEVER 0xFFFFFFFFFFFFFFFFull

/* Fills the first `size` bytes of *config with the defaults above and sets struct_size to
 * `size`; the caller then sets the cluster ID, the member IDs, the peers and the key. `size`
 * is sizeof(ipsecha_config) of the header the caller was built with: this header's, or
 * IPSECHA_CONFIG_SIZE_WITHOUT_CIPHER. Returns IPSECHA_E_NULL for NULL and
 * IPSECHA_E_STRUCT_SIZE, writing nothing, for another size. Call it through the
 * ipsecha_config_init macro below, which passes the size. */
int ipsecha_config_init_size(ipsecha_config *config, size_t size);

/* The previous release's entry point, kept for the programs built against its header (whose
 * ipsecha_config ended before sync_cipher): fills IPSECHA_CONFIG_SIZE_WITHOUT_CIPHER bytes,
 * never more, as ipsecha_config_init_size does for that size. Does nothing for NULL. */
void ipsecha_config_init(ipsecha_config *config);

/* Fills *config with the defaults above and sets struct_size, writing exactly the structure
 * this header declares: a library of a later ABI, whose ipsecha_config is larger, then never
 * writes beyond the caller's. (Called as a function, `(ipsecha_config_init)(&config)`, it
 * is the previous release's and fills only that release's fields.) */
#define ipsecha_config_init(config) ((void)ipsecha_config_init_size((config), sizeof(ipsecha_config)))

/* An opaque cluster member. */
typedef struct ipsecha_member ipsecha_member;

/* Makes a member from *config into *member_out (NULL on failure). The member starts as a
 * standby, or as the active member when active_member_id is member_id; a standby joins by a
 * bulk resync from the active member. */
int ipsecha_member_create(const ipsecha_config *config, ipsecha_member **member_out);

/* Frees a member and everything it handed out; wipes its keys. NULL does nothing. */
void ipsecha_member_destroy(ipsecha_member *member);

/* A sentence about the last call on this member that failed ("" when none). Valid until the
 * next non-const call on the member. Never NULL for a member; "" for NULL. */
const char *ipsecha_member_last_error(const ipsecha_member *member);

/* ------------------------------------------------------------------------------------------ */
/* Inputs: datagrams, time, signals                                                           */

/* A datagram received on the synch transport (1 to 65,535 bytes; the sender is in the
 * authenticated datagram itself). Forged, stale or damaged datagrams are counted and dropped:
 * they are no error. */
int ipsecha_receive(ipsecha_member *member, const uint8_t *datagram, size_t length, uint64_t now_ns);

/* Lets time pass: timers, heartbeats, checkpoints, failure detection and takeover. Call it
 * at ipsecha_next_deadline() at the latest. */
int ipsecha_tick(ipsecha_member *member, uint64_t now_ns);

/* When ipsecha_tick() next has work, unless a datagram comes first. */
int ipsecha_next_deadline(const ipsecha_member *member, uint64_t *deadline_ns);

/* Decisions from outside the synch channel. */
typedef enum ipsecha_signal {
    /* keepalived's state for this host's VRRP instance (its notify FIFO or scripts). MASTER
     * makes a standby take over; BACKUP, FAULT and STOP make an active member step down. */
    IPSECHA_SIGNAL_VRRP_MASTER = 1,
    IPSECHA_SIGNAL_VRRP_BACKUP = 2,
    IPSECHA_SIGNAL_VRRP_FAULT = 3,
    IPSECHA_SIGNAL_VRRP_STOP = 4,
    /* An operator makes this standby active now, complete copy or not. */
    IPSECHA_SIGNAL_TAKE_OVER = 5,
    /* An operator makes this active member stop serving and rejoin as a standby. */
    IPSECHA_SIGNAL_STEP_DOWN = 6,
    /* An operator hands this active member's role over to the lowest current standby with
     * exact state (a planned switchover: that member continues every counter at the next
     * number, no RFC 6311 sync for IKE SAs with nothing in flight). This member steps down at
     * once (IPSECHA_ACTION_STEPPED_DOWN); IPSECHA_E_NOT_ACTIVE on a standby, IPSECHA_E_STATE
     * when no standby is current (then nothing changes). With IPSECHA_DATA_PLANE_OBSERVED the
     * handover carries the counters last reported: stop the data plane first (with Linux XFRM,
     * delete each Child SA's SAs, outbound first, and take their last counters from the
     * kernel's XFRM_MSG_DELSA notice on XFRMNLGRP_SA, which no packet can follow), report those
     * with ipsecha_observe_counters, then signal; a data plane left sending would use numbers
     * the new active member uses again. */
    IPSECHA_SIGNAL_SWITCH_OVER = 7
} ipsecha_signal;

/* Takes a signal; reason (may be NULL) goes into the logs and the action. A signal that
 * changes nothing (MASTER on the active member) is no error. */
int ipsecha_signal_member(ipsecha_member *member, uint32_t signal, const char *reason, uint64_t now_ns);

/* Whether keepalived may give this member the cluster address (its readiness check). */
typedef enum ipsecha_readiness {
    /* The active member. */
    IPSECHA_READINESS_ACTIVE = 1,
    /* A standby with a complete copy of the active member's state. */
    IPSECHA_READINESS_COMPLETE_COPY = 2,
    /* A standby without one, but nobody has held a complete copy for the last-resort delay:
     * serving what it holds beats nobody serving. */
    IPSECHA_READINESS_LAST_RESORT = 3,
    /* A standby in the middle of its bulk resync. */
    IPSECHA_READINESS_RESYNCING = 4,
    /* A standby without a complete copy: just started, stepped down, or cut off. */
    IPSECHA_READINESS_INCOMPLETE = 5
} ipsecha_readiness;

/* The member's readiness as of its last tick, and whether keepalived may elect it (nonzero
 * for ACTIVE, COMPLETE_COPY and LAST_RESORT): write 0 to keepalived's track_file (weight 0)
 * when *electable is nonzero, 1 otherwise. */
int ipsecha_member_readiness(const ipsecha_member *member, uint32_t *readiness, uint32_t *electable);

/* What a member is, now. */
typedef struct ipsecha_member_status {
    uint32_t struct_size;
    /* Nonzero on the active member. */
    uint32_t active;
    /* Nonzero on a standby that holds a complete copy of the active member's state. */
    uint32_t ready;
    /* Nonzero on a standby in the middle of a bulk resync. */
    uint32_t resyncing;
    /* The IKE SAs and Child SAs this member holds (served, or replicated). */
    uint64_t ike_sa_count;
    uint64_t child_sa_count;
    /* Changes made but not yet held by every standby. */
    uint64_t tokens_held;
} ipsecha_member_status;

void ipsecha_member_status_init(ipsecha_member_status *status);
int ipsecha_member_status_get(const ipsecha_member *member, ipsecha_member_status *status);

/* ------------------------------------------------------------------------------------------ */
/* Outputs: actions                                                                           */

typedef enum ipsecha_action_kind {
    /* Send datagram (datagram_length bytes) to member peer on the synch transport. */
    IPSECHA_ACTION_TRANSMIT = 1,
    /* Every standby holds the change behind token: what waited for it (an IKE reply) may go. */
    IPSECHA_ACTION_RELEASED = 2,
    /* This standby holds a complete copy of the active member's state. */
    IPSECHA_ACTION_BECAME_READY = 3,
    /* The active member checkpointed count Child SAs' counters (for logs; nothing to do). */
    IPSECHA_ACTION_COUNTERS_CHECKPOINTED = 4,
    /* This member took over: the plan (ike_sa_count and child_sa_count entries, read with
     * ipsecha_takeover_ike_sa() and ipsecha_takeover_child_sa()) is applied to its state:
     * outbound counters advanced, inbound windows rebuilt. Start serving IKE and ESP, carry out
     * each IKE SA's message-ID decision with its peer (RFC 6311), and rekey the rekey_count
     * Child SAs in rekey_spis, which can neither send nor accept. */
    IPSECHA_ACTION_TOOK_OVER = 5,
    /* This member stopped serving (reason): it is a standby now and resyncs. */
    IPSECHA_ACTION_STEPPED_DOWN = 6,
    /* The active member fell silent but keepalived has not made this host MASTER (reason). */
    IPSECHA_ACTION_HELD_BACK = 7,
    /* A split brain healed: this member stayed active and moved every outbound counter on by
     * jump; the rekey_count Child SAs in rekey_spis could not move that far and were deleted. */
    IPSECHA_ACTION_REASSERTED = 8
} ipsecha_action_kind;

typedef struct ipsecha_action {
    uint32_t struct_size;
    /* ipsecha_action_kind. */
    uint32_t kind;
    /* TRANSMIT: the member to send to. */
    uint16_t peer;
    /* TRANSMIT: the datagram (owned by the member, see Conventions). */
    const uint8_t *datagram;
    size_t datagram_length;
    /* RELEASED: the token a change call returned. */
    uint64_t token;
    /* COUNTERS_CHECKPOINTED: the Child SAs checkpointed. */
    size_t count;
    /* TOOK_OVER: the plan's entries. */
    size_t ike_sa_count;
    size_t child_sa_count;
    /* TOOK_OVER, REASSERTED: inbound SPIs of the Child SAs to rekey (owned by the member). */
    const uint32_t *rekey_spis;
    size_t rekey_count;
    /* REASSERTED: how far the outbound counters moved. */
    uint64_t jump;
    /* STEPPED_DOWN, HELD_BACK: why, in a sentence (owned by the member); "" otherwise. */
    const char *reason;
} ipsecha_action;

void ipsecha_action_init(ipsecha_action *action);

/* The next thing to do, oldest first, into *action: IPSECHA_OK, or IPSECHA_NO_ACTION when
 * there is nothing. Drain it after every input call. */
int ipsecha_next_action(ipsecha_member *member, ipsecha_action *action);

/* ------------------------------------------------------------------------------------------ */
/* The takeover plan of the last IPSECHA_ACTION_TOOK_OVER, entry by entry                     */

typedef enum ipsecha_ike_sa_classification {
    /* Nothing in flight, no synch message missed: the message IDs are exact. */
    IPSECHA_IKE_SA_CERTAIN = 0,
    /* An exchange was under way when the active member failed. */
    IPSECHA_IKE_SA_IN_FLIGHT = 1,
    /* Synch messages about it may have been missed. */
    IPSECHA_IKE_SA_SUSPECT = 2
} ipsecha_ike_sa_classification;

typedef enum ipsecha_message_id_action {
    /* Continue with next_request_id and next_expected_request_id: nothing to tell the peer. */
    IPSECHA_MESSAGE_IDS_EXACT = 0,
    /* Run an RFC 6311 message-ID sync proposing sync_send (M1) and sync_receive (P1), with an
     * IPSEC_REPLAY_COUNTER_SYNC of replay_counter_delta when has_replay_counter_delta. */
    IPSECHA_MESSAGE_IDS_SYNC = 1,
    /* The peer's request was in flight and it has no RFC 6311: answer its retransmission from
     * the replicated state, continuing with next_request_id and next_expected_request_id. */
    IPSECHA_MESSAGE_IDS_AWAIT_PEER_RETRANSMISSION = 2,
    /* The IKE SA cannot continue: delete it and let the peer establish a new one. */
    IPSECHA_MESSAGE_IDS_DELETE_AND_REESTABLISH = 3
} ipsecha_message_id_action;

typedef struct ipsecha_ike_sa_takeover {
    uint32_t struct_size;
    uint64_t initiator_spi;
    uint64_t responder_spi;
    /* ipsecha_ike_sa_classification. */
    uint32_t classification;
    /* ipsecha_message_id_action. */
    uint32_t message_ids;
    /* EXACT, AWAIT_PEER_RETRANSMISSION: the next request this end sends, and the next request
     * it expects from the peer. */
    uint64_t next_request_id;
    uint64_t next_expected_request_id;
    /* SYNC: the values to propose. */
    uint32_t sync_send;
    uint32_t sync_receive;
    uint32_t has_replay_counter_delta;
    uint64_t replay_counter_delta;
    /* Nonzero when this IKE SA came from a rekey the peer may never have seen answered:
     * probe it; answered, delete the old IKE SA (unconfirmed_rekey_*); unanswered, call
     * ipsecha_ike_sa_undo_rekey(). */
    uint32_t has_unconfirmed_rekey;
    uint64_t unconfirmed_rekey_initiator_spi;
    uint64_t unconfirmed_rekey_responder_spi;
    /* Why, for the operator (a static string). */
    const char *reason;
} ipsecha_ike_sa_takeover;

typedef enum ipsecha_outbound_takeover {
    /* Continue after outbound_last_sent: the next packet carries outbound_last_sent + 1. */
    IPSECHA_OUTBOUND_RESUME = 0,
    /* The advance would pass the counter's limit: do not send, rekey. */
    IPSECHA_OUTBOUND_REKEY = 1
} ipsecha_outbound_takeover;

typedef enum ipsecha_inbound_takeover {
    /* The window counts everything up to the checkpoint plus inbound_advance as seen. */
    IPSECHA_INBOUND_RESTORE_CONSERVATIVE = 0,
    /* Same, and the peer is asked (RFC 6311) to raise its counters by inbound_advance. */
    IPSECHA_INBOUND_RESTORE_REPLAY_COUNTER_SYNC = 1,
    /* UNSAFE: the window resumes at the checkpoint, nothing below it seen. */
    IPSECHA_INBOUND_RESTORE_PERMISSIVE_UNSAFE = 2,
    /* The window cannot move that far: rekey. */
    IPSECHA_INBOUND_REKEY = 3
} ipsecha_inbound_takeover;

typedef struct ipsecha_child_sa_takeover {
    uint32_t struct_size;
    uint32_t inbound_spi;
    /* Its IKE SA. */
    uint64_t ike_initiator_spi;
    uint64_t ike_responder_spi;
    /* ipsecha_outbound_takeover, and the value to continue after. */
    uint32_t outbound;
    uint64_t outbound_last_sent;
    /* ipsecha_inbound_takeover, and how far the window's top moves past the checkpoint. */
    uint32_t inbound;
    uint64_t inbound_advance;
    /* How far the outbound counter moves past the checkpoint. */
    uint64_t advance;
    /* The facts behind the advance: the last checkpoint's age at the takeover, the packet rate
     * measured then, and whether the IKE SA is suspect. */
    uint32_t has_checkpoint_age;
    uint64_t checkpoint_age_ns;
    uint32_t has_packets_per_second;
    uint64_t packets_per_second;
    uint32_t suspect;
} ipsecha_child_sa_takeover;

void ipsecha_ike_sa_takeover_init(ipsecha_ike_sa_takeover *entry);
void ipsecha_child_sa_takeover_init(ipsecha_child_sa_takeover *entry);

/* Entry index (from 0) of the last takeover's plan. IPSECHA_E_NOT_FOUND past the end or
 * before any takeover. The plan stays readable until the next takeover or destruction. */
int ipsecha_takeover_ike_sa(const ipsecha_member *member, size_t index, ipsecha_ike_sa_takeover *entry);
int ipsecha_takeover_child_sa(const ipsecha_member *member, size_t index, ipsecha_child_sa_takeover *entry);

/* ------------------------------------------------------------------------------------------ */
/* State changes (active member): each returns a token, released once the standbys hold it   */

/* Bits of ipsecha_ike_sa.extensions. */
#define IPSECHA_IKE_MESSAGE_ID_SYNC 0x1u    /* RFC 6311 negotiated (IKEV2_MESSAGE_ID_SYNC) */
#define IPSECHA_IKE_REPLAY_COUNTER_SYNC 0x2u /* and IPSEC_REPLAY_COUNTER_SYNC */
#define IPSECHA_IKE_CHILD_SA_ESN 0x4u        /* its Child SAs use extended sequence numbers */

typedef struct ipsecha_ike_sa {
    uint32_t struct_size;
    /* The SPI pair; the initiator's is not 0. */
    uint64_t initiator_spi;
    uint64_t responder_spi;
    /* Nonzero when this gateway was the original initiator. */
    uint32_t original_initiator;
    /* 4 or 6; an IPv4 address is in the first 4 bytes, network order. */
    uint8_t address_family;
    uint8_t local_address[16];
    uint8_t remote_address[16];
    uint16_t local_port;
    uint16_t remote_port;
    /* Nonzero when ESP is in UDP on this path (NAT traversal). */
    uint32_t udp_encapsulation;
    /* Negotiated transforms, IKEv2 transform IDs (IANA); encryption_key_bits 0 when fixed. */
    uint16_t encryption;
    uint16_t encryption_key_bits;
    uint16_t prf;
    uint16_t integrity;
    uint16_t key_exchange;
    /* SK_d, SK_ai, SK_ar, SK_ei, SK_er, SK_pi, SK_pr one after the other, key_lengths[i]
     * bytes each, adding up to keys_length (at most 1,024). Copied. */
    const uint8_t *keys;
    size_t keys_length;
    size_t key_lengths[7];
    /* IPSECHA_IKE_* bits. */
    uint32_t extensions;
    /* Message IDs: the next request this end sends, the next it expects (0 and 0 for a new
     * IKE SA), and both windows (default 1). */
    uint64_t next_request_id;
    uint64_t next_expected_request_id;
    uint32_t peer_window_size;
    uint32_t local_window_size;
} ipsecha_ike_sa;

void ipsecha_ike_sa_init(ipsecha_ike_sa *sa);

/* An IKE SA that is established (IKE_AUTH done, or a rekey's new SA). */
int ipsecha_ike_sa_create(ipsecha_member *member, const ipsecha_ike_sa *sa, uint64_t now_ns, uint64_t *token);

/* After each exchange on the IKE SA: where its message IDs stand now (nothing outstanding). */
int ipsecha_ike_sa_update_message_ids(ipsecha_member *member, uint64_t initiator_spi, uint64_t responder_spi,
                                      uint64_t next_request_id, uint64_t next_expected_request_id, uint64_t now_ns,
                                      uint64_t *token);

/* An exchange started (finished 0: before this end's request leaves, or once the peer's
 * authentic request arrived) or finished (after its changes were made), so that a takeover
 * knows what was in flight. initiated_here: this end sent the request. */
int ipsecha_ike_sa_exchange(ipsecha_member *member, uint64_t initiator_spi, uint64_t responder_spi, uint32_t message_id,
                            int initiated_here, int finished, uint64_t now_ns, uint64_t *token);

/* The IKE SA was rekeyed (RFC 7296 2.18): new_sa is added, every Child SA moves to it; the
 * old IKE SA stays, without Child SAs, until ipsecha_ike_sa_delete(). */
int ipsecha_ike_sa_rekey(ipsecha_member *member, uint64_t old_initiator_spi, uint64_t old_responder_spi,
                         const ipsecha_ike_sa *new_sa, uint64_t now_ns, uint64_t *token);

/* Takes back a rekey the peer never saw (see ipsecha_ike_sa_takeover.has_unconfirmed_rekey). */
int ipsecha_ike_sa_undo_rekey(ipsecha_member *member, uint64_t initiator_spi, uint64_t responder_spi, uint64_t now_ns,
                              uint64_t *token);

/* Deletes the IKE SA and its Child SAs. */
int ipsecha_ike_sa_delete(ipsecha_member *member, uint64_t initiator_spi, uint64_t responder_spi, uint64_t now_ns,
                          uint64_t *token);

/* One traffic selector (RFC 7296 3.13.1). Frozen layout, no struct_size. */
typedef struct ipsecha_traffic_selector {
    /* 4 or 6; addresses as in ipsecha_ike_sa. */
    uint8_t address_family;
    /* 0 for any protocol. */
    uint8_t ip_protocol;
    /* 0 to 65535 for any port. */
    uint16_t start_port;
    uint16_t end_port;
    uint8_t start_address[16];
    uint8_t end_address[16];
} ipsecha_traffic_selector;

typedef struct ipsecha_child_sa {
    uint32_t struct_size;
    /* The SPI this end receives on (the Child SA's name) and the peer's; both above 255. */
    uint32_t inbound_spi;
    uint32_t outbound_spi;
    /* Its IKE SA, which must exist. */
    uint64_t ike_initiator_spi;
    uint64_t ike_responder_spi;
    /* Nonzero for transport mode; tunnel mode otherwise. */
    uint32_t transport_mode;
    /* Transform IDs (IANA): an AEAD has integrity 0; encryption_key_bits 0 when fixed. */
    uint16_t encryption;
    uint16_t encryption_key_bits;
    uint16_t integrity;
    /* Keys of each direction (copied; at most 512 bytes each): the encryption key with its
     * salt, and the integrity key (NULL and 0 for an AEAD). */
    const uint8_t *inbound_encryption_key;
    size_t inbound_encryption_key_length;
    const uint8_t *inbound_integrity_key;
    size_t inbound_integrity_key_length;
    const uint8_t *outbound_encryption_key;
    size_t outbound_encryption_key_length;
    const uint8_t *outbound_integrity_key;
    size_t outbound_integrity_key_length;
    /* Nonzero with extended sequence numbers. */
    uint32_t extended_sequence_numbers;
    /* The inbound replay window, in packets (32 to 1,048,576; default 64). */
    uint32_t replay_window_size;
    /* Lifetimes; 0 means no limit. A soft limit is not above its hard one. */
    uint64_t soft_seconds, soft_bytes, soft_packets;
    uint64_t hard_seconds, hard_bytes, hard_packets;
    /* The daemon's own reference (strongSwan's reqid), replicated as is. */
    uint32_t request_id;
    /* At least one selector each side, at most 24 together. */
    const ipsecha_traffic_selector *local_selectors;
    size_t local_selector_count;
    const ipsecha_traffic_selector *remote_selectors;
    size_t remote_selector_count;
} ipsecha_child_sa;

void ipsecha_child_sa_init(ipsecha_child_sa *sa);

/* A Child SA that is installed (IKE_AUTH or CREATE_CHILD_SA done). */
int ipsecha_child_sa_create(ipsecha_member *member, const ipsecha_child_sa *sa, uint64_t now_ns, uint64_t *token);

/* A Child SA rekey completed: new_sa (of the same IKE SA) is installed and the one with
 * old_inbound_spi deleted, one token for both. Nothing changes when either fails. */
int ipsecha_child_sa_rekey(ipsecha_member *member, uint32_t old_inbound_spi, const ipsecha_child_sa *new_sa,
                           uint64_t now_ns, uint64_t *token);

/* Deletes the Child SA. */
int ipsecha_child_sa_delete(ipsecha_member *member, uint32_t inbound_spi, uint64_t now_ns, uint64_t *token);

/* ------------------------------------------------------------------------------------------ */
/* Counters                                                                                   */

typedef struct ipsecha_child_sa_counters {
    uint32_t struct_size;
    uint32_t inbound_spi;
    /* The last outbound sequence number used (0: none yet). */
    uint64_t outbound_last_sent;
    /* The highest inbound sequence number authenticated (the replay window's top). */
    uint64_t inbound_highest;
    uint64_t inbound_bytes, inbound_packets;
    uint64_t outbound_bytes, outbound_packets;
} ipsecha_child_sa_counters;

void ipsecha_child_sa_counters_init(ipsecha_child_sa_counters *counters);

/* IPSECHA_DATA_PLANE_USERSPACE, active member: the sequence number for the next outbound
 * packet of bytes bytes on the Child SA; *rekey_due (may be NULL) becomes nonzero once its
 * soft limit is reached. */
int ipsecha_outbound_sequence_number(ipsecha_member *member, uint32_t inbound_spi, uint64_t bytes,
                                     uint64_t *sequence_number, int *rekey_due);

/* IPSECHA_DATA_PLANE_USERSPACE, active member: phase one of the inbound replay check for the
 * 32 bits on the wire: IPSECHA_OK with the full sequence number (ESN inferred) when fresh,
 * IPSECHA_E_REPLAYED or IPSECHA_E_STALE (drop) otherwise. Changes nothing. */
int ipsecha_inbound_check(const ipsecha_member *member, uint32_t inbound_spi, uint32_t wire_sequence_number,
                          uint64_t *sequence_number);

/* Phase two, after the packet's ICV verified: commits sequence_number (from the check). */
int ipsecha_inbound_commit(ipsecha_member *member, uint32_t inbound_spi, uint64_t sequence_number, uint64_t bytes);

/* IPSECHA_DATA_PLANE_OBSERVED, active member: counters read from the data plane, forward only
 * (values behind the member's are ignored), carried by the next checkpoints. Entries for Child
 * SAs the member does not hold, or beyond their sequence space, are skipped and counted in
 * *refused (may be NULL); every entry's struct_size must be sizeof(ipsecha_child_sa_counters). */
int ipsecha_observe_counters(ipsecha_member *member, const ipsecha_child_sa_counters *counters, size_t count,
                             size_t *refused);

/* IPSECHA_DATA_PLANE_OBSERVED: the longest the counters of a Child SA that carries traffic go
 * unreported because the data plane reports them only that often (the kernel's async events
 * come at most once per SA timer threshold, XFRMA_ETIMER_THRESH; a GETAE sweep's interval).
 * Packet rates, and the takeover advances sized from them, are measured over at least this:
 * counters that move in steps look idle between them. Default 0: counters read afresh before
 * every tick. At most one hour (IPSECHA_E_INVALID_ARGUMENT above). */
int ipsecha_set_counter_report_interval(ipsecha_member *member, uint64_t interval_ns);

/* The member's counters of a Child SA: after a takeover, what to write into a data plane that
 * keeps its own (outbound counter and inbound window top as the plan left them). */
int ipsecha_child_sa_counters_get(const ipsecha_member *member, uint32_t inbound_spi,
                                  ipsecha_child_sa_counters *counters);

#ifdef __cplusplus
}
#endif

#endif /* IPSECHA_H */
