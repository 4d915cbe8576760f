/*
 * Who is active, by epoch, in an active/standby cluster: at most one member is ever active at
 * an epoch, and two active members that each processed the other's hello never both stay
 * active (epochs decide a split brain).
 *
 * Models the epoch a member takes (ClusterMember.nextEpoch, Sources/IPsecHASync/Member/
 * ClusterMember+Roles.swift: above everything it has been at or heard of, its rank in the
 * low bits), the step-down rule (ClusterRole.heardHello, Sources/IPsecHASync/Failover/
 * ClusterRole.swift: a newer epoch, or the same with a higher ID, wins), the reassertion after
 * a healed split brain (ClusterRole.reassert: a newer epoch), the keepalived follower
 * (VRRPFollower: MASTER takes over, BACKUP, FAULT and STOP step down), and restarts (an epoch
 * from the clock, so possibly lower than before, and everything heard forgotten).
 *
 * Every decision to take over is left to the adversary: the failure detector may be wrong at
 * any time, keepalived may say MASTER to any member, an operator may promote any standby, and
 * a last-resort takeover may happen (quorums and claims, ClusterMemberConfiguration.
 * takeoverQuorum, only make takeovers rarer, so the property holds without them). Hellos are
 * delivered in any order, or lost.
 *
 * Variants that must fail: -DBROKEN_EPOCH takes the epoch as the largest known plus one (the
 * rule before this model: two standbys with the same knowledge took the same epoch);
 * -DBROKEN_STEPDOWN keeps an active member active whatever it hears.
 */

#ifndef N
#define N 3
#endif
#ifndef MAXEVENTS
#define MAXEVENTS 4
#endif
#ifndef MAXHELLOS
#define MAXHELLOS 4
#endif
/* ClusterMember.epochRankMask + 1 */
#define RANK_SPAN 64
#define SLOTS 2

short epoch[N];
short heardEpoch[N];
bool isActive[N];
bool running[N];
short seen[N * N];          /* the epoch of j's hello i processed last (0: none) */
byte events = 0;
byte hellos = 0;
/* Hellos in flight: from, to, epoch (from = 255: a free slot). */
byte hFrom[SLOTS];
byte hTo[SLOTS];
short hEpoch[SLOTS];

#define IX(i, j) ((i) * N + (j))

inline nextEpoch(m, e) {
    e = (epoch[m] > heardEpoch[m] -> epoch[m] : heardEpoch[m]);
#ifdef BROKEN_EPOCH
    e = e + 1
#else
    e = (e / RANK_SPAN + 1) * RANK_SPAN + m
#endif
}

/* The properties, after every step. */
inline check() {
    c1 = 0;
    do
    :: c1 < N ->
        c2 = c1 + 1;
        do
        :: c2 < N ->
            assert(!(isActive[c1] && isActive[c2] && epoch[c1] == epoch[c2]));
            assert(!(isActive[c1] && isActive[c2] && seen[IX(c1, c2)] == epoch[c2] && seen[IX(c2, c1)] == epoch[c1]));
            c2++
        :: else -> break
        od;
        c1++
    :: else -> break
    od;
    c1 = 0; c2 = 0
}

inline becomeActive(m) {
    nextEpoch(m, e);
    epoch[m] = e;
    if :: e > heardEpoch[m] -> heardEpoch[m] = e :: else -> skip fi;
    isActive[m] = true
}

init {
    byte m, j, s, c1, c2;
    short e;
    atomic {
        m = 0;
        do :: m < N -> running[m] = true; epoch[m] = 1; m++ :: else -> break od;
        s = 0;
        do :: s < SLOTS -> hFrom[s] = 255; s++ :: else -> break od;
        /* Member 1 (index 0) is active at the start, at its configured epoch. */
        isActive[0] = true
    }
    do
    :: atomic { events < MAXEVENTS -> select(m : 0 .. N - 1);
        if
        /* A takeover: the failure detector, keepalived's MASTER, an operator, the last resort. */
        :: running[m] && !isActive[m] -> becomeActive(m)
        /* A reassertion after a healed split brain: a newer epoch. */
        :: running[m] && isActive[m] -> nextEpoch(m, e); epoch[m] = e; if :: e > heardEpoch[m] -> heardEpoch[m] = e :: else -> skip fi
        /* keepalived's BACKUP, FAULT or STOP, or an operator: step down. */
        :: running[m] && isActive[m] -> isActive[m] = false
        :: running[m] -> running[m] = false; isActive[m] = false
        /* A reboot: the epoch from the clock (perhaps lower than before), nothing remembered. */
        :: !running[m] -> running[m] = true; select(e : 1 .. 2); epoch[m] = e; heardEpoch[m] = 0;
            j = 0; do :: j < N -> seen[IX(m, j)] = 0; j++ :: else -> break od
        fi;
        events++; check() }
    /* An active member says hello to another (every hello interval). */
    :: atomic { hellos < MAXHELLOS -> select(m : 0 .. N - 1); select(j : 0 .. N - 1); select(s : 0 .. SLOTS - 1);
        if
        :: m != j && running[m] && isActive[m] && hFrom[s] == 255 -> hFrom[s] = m; hTo[s] = j; hEpoch[s] = epoch[m]; hellos++
        :: else -> skip
        fi;
        m = 0; j = 0; s = 0 }
    /* A hello is lost, or delivered (in any order). */
    :: atomic { hFrom[0] != 255 || hFrom[1] != 255 -> select(s : 0 .. SLOTS - 1); if :: hFrom[s] != 255 -> hFrom[s] = 255 :: else -> skip fi; s = 0 }
    :: atomic { (hFrom[0] != 255 && running[hTo[0]]) || (hFrom[1] != 255 && running[hTo[1]]) ->
        select(s : 0 .. SLOTS - 1);
        if
        :: hFrom[s] != 255 && running[hTo[s]] ->
        m = hTo[s]; j = hFrom[s]; e = hEpoch[s]; hFrom[s] = 255;
        if :: e > heardEpoch[m] -> heardEpoch[m] = e :: else -> skip fi;
        seen[IX(m, j)] = e;
#ifndef BROKEN_STEPDOWN
        if :: isActive[m] && (e > epoch[m] || (e == epoch[m] && j > m)) -> isActive[m] = false :: else -> skip fi;
#endif
        check()
        :: else -> skip
        fi;
        m = 0; j = 0; e = 0; s = 0 }
    :: events >= MAXEVENTS -> break
    od
}

