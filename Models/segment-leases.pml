/*
 * Segment leases of a load-sharing cluster, for one segment: at most one member serves it at
 * any time.
 *
 * Models SegmentOwnership (Sources/IPsecHASync/LoadSharing/SegmentOwnership.swift): views
 * (a peer is up while heard within the failure timeout), leases (a member serves only while
 * it sees a quorum and holds fresh echoes of its beacons from min(members - quorum, peers up)
 * peers, an echo counting only once every claim the echoing peer had sent before it was
 * processed), versioned claims (sent reliably to every peer that is up, relayed by each
 * receiver, the whole table to a peer that comes up), takeovers (the member the assignment
 * names takes a segment whose owner is down in its view, and serves once every peer up
 * processed the claim, a quorum with it did, and a lease more passed) and restarts (a new
 * incarnation, silent for the startup silence, its previous claims no longer its own).
 *
 * Time moves in ticks of one beacon interval (20 ms), the same on every member: the
 * documented clock assumption is that clocks drift apart by less than a beacon interval over
 * a failure timeout, and that a datagram is delivered within the tick it is sent or lost.
 * The constants are SegmentOwnershipConfiguration's defaults in ticks; ModelCheckTests fails
 * when they drift from the code. With two members a cut of the synch link must heal within
 * the failure timeout (two members cannot tell a partition from a crash: Docs/LoadSharing.md);
 * with three, links are cut and healed at will, in one direction or both.
 *
 * The run: member 1 owns the segment; up to MAXEVENTS faults (a crash, a restart, a member
 * cut off from the others both ways, a heal), each at any tick up to EVENT_WINDOW, the rest of
 * the HORIZON to settle. `make model-check` checks 3 faults exhaustively (and 4 with
 * MODEL_DEPTH=4, about 8 GB).
 *
 * With four members or more a fault can also split the cluster in two (two members on one
 * side), replacing whatever was cut.
 *
 * Variants that must fail: -DBROKEN_NO_MAJORITY renews the lease without echoes from a
 * majority (need = 0); -DBROKEN_VOUCH_UNINFORMED lets a member echo before it has the claims
 * of every peer it counts as up (what the code did before this model: a restarted member's
 * echoes renewed an old owner's lease beside the new owner's; it takes four faults);
 * -DBROKEN_SILENT_CONFIRM counts a peer that went down before it processed a claim as having
 * processed it (what the code did before torture seed 1380: with four members, the owner cut
 * off, then the cluster split while the claim was in flight, and both served at the heal).
 */

#ifndef N
#define N 3
#endif
/* SegmentOwnershipConfiguration's defaults, and its startup silence in beacons. */
#define BEACON_MS 20
#define LEASE_MS 100
#define FAILURE_MS 200
#define SILENCE_BEACONS 4
#define LEASE (LEASE_MS / BEACON_MS)
#define FAIL (FAILURE_MS / BEACON_MS)
#define SILENCE (FAIL + LEASE + SILENCE_BEACONS)
#ifndef HORIZON
#define HORIZON 46
#endif
#ifndef MAXEVENTS
#define MAXEVENTS 3
#endif
#ifndef EVENT_WINDOW
#define EVENT_WINDOW 16
#endif
#if N <= 2
#define Q 1
#define CUTMAX (FAIL - 1)
#else
#define Q (N / 2 + 1)
#define CUTMAX 255
#endif
#define NONE 255
#define IX(i, j) ((i) * N + (j))

byte t = 1;                /* times are t, from 1; 0 means never */
bool running[N];
byte startedAt[N];
byte incarnation[N];
byte events = 0;
byte cutSince = 0;         /* the oldest cut still in force (N = 2: it heals by CUTMAX) */
bool cut[N * N];           /* datagrams from i to j are lost */

/* What member i knows of peer j. */
byte lastHeard[N * N];
byte knownIncarnation[N * N];
byte latestSentAt[N * N];  /* j's latest beacon time, echoed back */
byte echo[N * N];          /* i's own beacon time j echoed, counted */
byte pendingEcho[N * N];
byte pendingClaims[N * N];
byte claimsSent[N * N];
byte claimsProcessed[N * N];
byte reportedProcessed[N * N];
bool isUp[N * N];
bool needsTable[N * N];

/* The segment's claim as member i holds it. */
byte owner[N];
byte ownerIncarnation[N];
byte version[N];
/* A taker's confirmation: the claims record each peer up at the claim must report processed
   (NONE: a peer not waited for), and when every one that is up did, a quorum with the taker
   (0: not yet); awaiting false: nothing to wait for. */
bool awaiting[N];
byte waitFor[N * N];
byte completedAt[N];

/* The newest claims record from i to j not yet delivered (reliable: it waits for the link). */
bool queued[N * N];
byte qOwner[N * N];
byte qIncarnation[N * N];
byte qVersion[N * N];
byte qSequence[N * N];

byte servingCount;
/* Whether member i's beacons carry echoes: it processed a claims record (the whole table)
   from every peer it counts as up, so it vouches for no lease against a claim it has not
   seen (a restarted member's echoes renewed an old owner's lease before it learnt of the
   newer claim: the first run of this model found it). */
bool vouches[N];

#define mine(i) (owner[i] == i && ownerIncarnation[i] == incarnation[i])

/* Sends i's claim to j, numbered; a newer record supersedes one still queued. */
inline sendClaim(i, j) {
    claimsSent[IX(i, j)]++;
    queued[IX(i, j)] = true;
    qOwner[IX(i, j)] = owner[i];
    qIncarnation[IX(i, j)] = ownerIncarnation[i];
    qVersion[IX(i, j)] = version[i];
    qSequence[IX(i, j)] = claimsSent[IX(i, j)]
}

inline broadcast(i, except) {
    k = 0;
    do
    :: k < N -> if :: k != i && k != except && isUp[IX(i, k)] -> sendClaim(i, k) :: else -> skip fi; k++
    :: else -> break
    od
}

inline hasLease(i, result) {
    upPeers = 0; fresh = 0; k = 0;
    do
    :: k < N ->
        if
        :: k != i && isUp[IX(i, k)] ->
            upPeers++;
            if :: echo[IX(i, k)] > 0 && t < echo[IX(i, k)] + LEASE -> fresh++ :: else -> skip fi
        :: else -> skip
        fi;
        k++
    :: else -> break
    od;
#ifdef BROKEN_NO_MAJORITY
    need = 0;
#else
    need = (N - Q < upPeers -> N - Q : upPeers);
#endif
    result = (upPeers + 1 >= Q && fresh >= need)
}

inline confirmed(i, result) {
    result = (!awaiting[i] || (completedAt[i] > 0 && t >= completedAt[i] + LEASE))
}

inline renew(i, j, value) {
    if :: value > echo[IX(i, j)] -> echo[IX(i, j)] = value :: else -> skip fi
}

/* A beacon from j reaches i. */
inline beacon(i, j) {
    if
    :: knownIncarnation[IX(i, j)] < incarnation[j] ->
        /* A restart of j: forget its progress, give it the whole table again. */
        knownIncarnation[IX(i, j)] = incarnation[j];
        claimsProcessed[IX(i, j)] = 0; reportedProcessed[IX(i, j)] = 0; echo[IX(i, j)] = 0;
        pendingEcho[IX(i, j)] = 0; latestSentAt[IX(i, j)] = 0; needsTable[IX(i, j)] = true
    :: else -> skip
    fi;
    lastHeard[IX(i, j)] = t;
    /* current: j knew this incarnation of i when it sent the beacon */
    if
    :: knownIncarnation[IX(j, i)] == incarnation[i] && latestSentAt[IX(j, i)] > 0 && vouches[j] ->
        if
        :: claimsSent[IX(j, i)] <= claimsProcessed[IX(i, j)] -> renew(i, j, latestSentAt[IX(j, i)])
        :: else -> pendingEcho[IX(i, j)] = latestSentAt[IX(j, i)]; pendingClaims[IX(i, j)] = claimsSent[IX(j, i)]
        fi;
        reportedProcessed[IX(i, j)] = claimsProcessed[IX(j, i)]
    :: else -> skip
    fi;
    latestSentAt[IX(i, j)] = t
}

/* A claims record from j reaches i. */
inline claim(i, j) {
    queued[IX(j, i)] = false;
    claimsProcessed[IX(i, j)] = qSequence[IX(j, i)];
    if
    :: pendingEcho[IX(i, j)] > 0 && pendingClaims[IX(i, j)] <= qSequence[IX(j, i)] ->
        renew(i, j, pendingEcho[IX(i, j)]); pendingEcho[IX(i, j)] = 0
    :: else -> skip
    fi;
    if
    :: qVersion[IX(j, i)] > version[i] ->
        owner[i] = qOwner[IX(j, i)]; ownerIncarnation[i] = qIncarnation[IX(j, i)]; version[i] = qVersion[IX(j, i)];
        if :: !mine(i) -> awaiting[i] = false :: else -> skip fi;
        broadcast(i, j)
    :: else -> skip
    fi
}

inline crash(m) {
    running[m] = false;
    k = 0;
    do :: k < N -> queued[IX(m, k)] = false; queued[IX(k, m)] = false; k++ :: else -> break od
}

inline restart(m) {
    running[m] = true; startedAt[m] = t; incarnation[m]++;
    owner[m] = NONE; ownerIncarnation[m] = 0; version[m] = 0; awaiting[m] = false; completedAt[m] = 0;
    k = 0;
    do
    :: k < N ->
        lastHeard[IX(m, k)] = 0; knownIncarnation[IX(m, k)] = 0; latestSentAt[IX(m, k)] = 0; echo[IX(m, k)] = 0;
        pendingEcho[IX(m, k)] = 0; claimsSent[IX(m, k)] = 0; claimsProcessed[IX(m, k)] = 0;
        reportedProcessed[IX(m, k)] = 0; isUp[IX(m, k)] = false; needsTable[IX(m, k)] = false; k++
    :: else -> break
    od
}

init {
    byte i, j, k, upPeers, fresh, need, lowest;
    bool lease, done, silent, listening;
    atomic {
        i = 0;
        do
        :: i < N ->
            running[i] = true; incarnation[i] = 1; startedAt[i] = 0;
            owner[i] = 0; ownerIncarnation[i] = 1; version[i] = 1;
            j = 0;
            do
            :: j < N ->
                /* A settled cluster: each member has sent every peer its whole table once. */
                if :: i != j -> lastHeard[IX(i, j)] = 1; isUp[IX(i, j)] = true; knownIncarnation[IX(i, j)] = 1;
                                latestSentAt[IX(i, j)] = 1; echo[IX(i, j)] = 1;
                                claimsSent[IX(i, j)] = 1; claimsProcessed[IX(i, j)] = 1; reportedProcessed[IX(i, j)] = 1
                   :: else -> skip fi;
                j++
            :: else -> break
            od;
            i++
        :: else -> break
        od
    }
    do
    :: t >= HORIZON -> break
    :: t < HORIZON ->
        /* At most MAXEVENTS faults in a run, each at any tick. */
        if
        :: true -> skip
        :: events < MAXEVENTS && t <= EVENT_WINDOW -> select(i : 0 .. N - 1);
            if :: running[i] -> crash(i) :: !running[i] -> restart(i) fi; events++
        :: events < MAXEVENTS && t <= EVENT_WINDOW && cutSince == 0 -> select(i : 0 .. N - 1);
            /* Member i cut off from the others, both ways. */
            k = 0;
            do :: k < N -> if :: k != i -> cut[IX(i, k)] = true; cut[IX(k, i)] = true :: else -> skip fi; k++ :: else -> break od;
            cutSince = t; events++
#if N >= 4
        :: events < MAXEVENTS && t <= EVENT_WINDOW -> select(i : 0 .. N - 2); select(j : i + 1 .. N - 1);
            /* The cluster split in two: members i and j on one side, the rest on the other
               (whatever was cut before heals). */
            k = 0;
            do
            :: k < N * N -> cut[k] = ((k / N == i || k / N == j) != (k % N == i || k % N == j)); k++
            :: else -> break
            od;
            if :: cutSince == 0 -> cutSince = t :: else -> skip fi; events++
#endif
        :: events < MAXEVENTS && cutSince > 0 ->
            k = 0; do :: k < N * N -> cut[k] = false; k++ :: else -> break od; cutSince = 0; events++
        fi;
        d_step {
            if
            :: cutSince > 0 && t >= cutSince + CUTMAX -> k = 0; do :: k < N * N -> cut[k] = false; k++ :: else -> break od; cutSince = 0
            :: else -> skip
            fi;
            /* Beacons, one per peer per tick, then claims records whose link is up. */
            i = 0;
            do
            :: i < N ->
                j = 0;
                do
                :: j < N ->
                    if
                    :: i != j && running[i] && running[j] && !cut[IX(j, i)] && t >= startedAt[j] + SILENCE && startedAt[j] > 0 -> beacon(i, j)
                    :: i != j && running[i] && running[j] && !cut[IX(j, i)] && startedAt[j] == 0 -> beacon(i, j)
                    :: else -> skip
                    fi;
                    j++
                :: else -> break
                od;
                i++
            :: else -> break
            od;
            i = 0;
            do
            :: i < N ->
                j = 0;
                do
                :: j < N ->
                    if :: i != j && running[i] && queued[IX(j, i)] && !cut[IX(j, i)] -> claim(i, j) :: else -> skip fi;
                    j++
                :: else -> break
                od;
                i++
            :: else -> break
            od;
            /* Each member's tick: views, the whole table to peers that came up, stale claims
               released, a takeover, confirmations. */
            i = 0;
            do
            :: i < N ->
                if
                :: running[i] ->
                    silent = (startedAt[i] > 0 && t < startedAt[i] + SILENCE);
                    j = 0;
                    do
                    :: j < N ->
                        if
                        :: i != j ->
                            done = (lastHeard[IX(i, j)] > 0 && t < lastHeard[IX(i, j)] + FAIL);
                            if :: done && !isUp[IX(i, j)] -> needsTable[IX(i, j)] = true :: else -> skip fi;
                            isUp[IX(i, j)] = done;
                            if :: done && needsTable[IX(i, j)] && !silent -> needsTable[IX(i, j)] = false; sendClaim(i, j) :: else -> skip fi
                        :: else -> skip
                        fi;
                        j++
                    :: else -> break
                    od;
#ifdef BROKEN_VOUCH_UNINFORMED
                    vouches[i] = true;
#else
                    vouches[i] = true; j = 0;
                    do
                    :: j < N -> if :: j != i && isUp[IX(i, j)] && claimsProcessed[IX(i, j)] == 0 -> vouches[i] = false :: else -> skip fi; j++
                    :: else -> break
                    od;
#endif
                    if
                    :: !silent && owner[i] == i && ownerIncarnation[i] != incarnation[i] ->
                        owner[i] = NONE; version[i]++; broadcast(i, NONE)
                    :: else -> skip
                    fi;
                    /* The assignment over the members up in i's view gives the segment to the
                       lowest of them; it takes the segment when its owner is not in the view. */
                    lowest = i; j = 0;
                    do :: j < N -> if :: j < lowest && isUp[IX(i, j)] -> lowest = j :: else -> skip fi; j++ :: else -> break od;
                    hasLease(i, lease);
                    done = (owner[i] == NONE);
                    if :: !done -> done = !isUp[IX(i, owner[i])] :: else -> skip fi;
                    listening = (startedAt[i] > 0 && t < startedAt[i] + SILENCE + FAIL);
                    if
                    :: !listening && lowest == i && lease && !mine(i) && done ->
                        owner[i] = i; ownerIncarnation[i] = incarnation[i]; version[i]++;
                        broadcast(i, NONE);
                        awaiting[i] = true; completedAt[i] = 0;
                        j = 0;
                        do :: j < N -> if :: j != i && isUp[IX(i, j)] -> waitFor[IX(i, j)] = claimsSent[IX(i, j)] :: else -> waitFor[IX(i, j)] = NONE fi; j++ :: else -> break od
                    :: else -> skip
                    fi;
                    if
                    :: awaiting[i] && completedAt[i] == 0 ->
                        /* Every peer waited for that is up processed the claim, and a quorum with
                           i did: a peer that went silent unprocessed does not count. */
                        done = true; fresh = 1; j = 0;
                        do
                        :: j < N ->
                            if
                            :: waitFor[IX(i, j)] != NONE && reportedProcessed[IX(i, j)] >= waitFor[IX(i, j)] -> fresh++
                            :: waitFor[IX(i, j)] != NONE && reportedProcessed[IX(i, j)] < waitFor[IX(i, j)] ->
#ifdef BROKEN_SILENT_CONFIRM
                                if :: isUp[IX(i, j)] -> done = false :: else -> fresh++ fi
#else
                                if :: isUp[IX(i, j)] -> done = false :: else -> skip fi
#endif
                            :: else -> skip
                            fi;
                            j++
                        :: else -> break
                        od;
                        if :: done && fresh >= Q -> completedAt[i] = t :: else -> skip fi;
                        fresh = 0
                    :: else -> skip
                    fi
                :: else -> skip
                fi;
                i++
            :: else -> break
            od;
            /* The property, at every tick. */
            servingCount = 0; i = 0;
            do
            :: i < N ->
                if
                :: running[i] && mine(i) ->
                    hasLease(i, lease); confirmed(i, done);
                    if :: lease && done -> servingCount++ :: else -> skip fi
                :: else -> skip
                fi;
                i++
            :: else -> break
            od;
            assert(servingCount <= 1);
            t++
        }
    od
}
