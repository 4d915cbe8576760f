// The layouts ipsecha.h promises, checked where the library is built: a change that moves a
// field of the frozen structure, or shrinks the ABI's integers, fails the build instead of
// every embedder.
#include "ipsecha.h"

_Static_assert(sizeof(ipsecha_traffic_selector) == 38, "ipsecha_traffic_selector is frozen at 38 bytes");
_Static_assert(sizeof(uint64_t) == 8 && sizeof(uint32_t) == 4, "fixed-width integers");
_Static_assert(offsetof(ipsecha_config, sync_cipher) == IPSECHA_CONFIG_SIZE_WITHOUT_CIPHER - 4, "sync_cipher fills what was tail padding");
_Static_assert(offsetof(ipsecha_config, last_resort_takeover_ns) == 104, "last_resort_takeover_ns is where reserved was");
_Static_assert(IPSECHA_LAST_RESORT_NEVER == UINT64_MAX, "never: the largest value");
_Static_assert(sizeof(ipsecha_config) == 112, "ipsecha_config with sync_cipher");
_Static_assert(IPSECHA_ABI_VERSION == 1, "bump the static assertions with the ABI");
