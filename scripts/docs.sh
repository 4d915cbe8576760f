#!/usr/bin/env bash
# Builds the DocC catalog of every public module (Sources/MODULE/MODULE.docc) with warnings as
# errors, from the symbol graphs of a build of its own (.build/docs), into .build/docs/html.
set -euo pipefail
cd "$(dirname "$0")/.."
modules=(IPsecHACore IPsecHASync IPsecHATestKit IPsecHASimulation IPsecHASyncNIO IPsecHAXFRM IPsecHAXFRMDataPlane IPsecHAGateway)
graphs="$PWD/.build/docs/symbol-graphs"
build() {
    mkdir -p "$graphs/all"
    swift build --scratch-path .build/docs -Xswiftc -emit-symbol-graph -Xswiftc -emit-symbol-graph-dir -Xswiftc "$graphs/all" >/dev/null
}
# An incremental build emits the graphs of the modules it compiles again only: the others keep
# theirs from before, and a build from scratch makes all of them.
build
for module in "${modules[@]}"; do
    if [ ! -f "$graphs/all/$module.symbols.json" ]; then
        rm -rf .build/docs
        build
    fi
done
rm -rf .build/docs/html
mkdir -p .build/docs/html
for module in "${modules[@]}"; do
    echo "docc: $module"
    rm -rf "$graphs/$module"
    mkdir -p "$graphs/$module"
    cp "$graphs/all/$module".*json "$graphs/$module/"
    cp "$graphs/all/$module"@*.json "$graphs/$module/" 2>/dev/null || true
    catalog="Sources/$module/$module.docc"
    # The reference gateway is an example, not a product: its catalog is under Examples/.
    [ -d "$catalog" ] || catalog="Examples/ReferenceGateway/$module/$module.docc"
    docc convert "$catalog" --additional-symbol-graph-dir "$graphs/$module" \
        --fallback-display-name "$module" --fallback-bundle-identifier "ipsec-ha.$module" \
        --output-path ".build/docs/html/$module" --warnings-as-errors
done
echo "documentation in .build/docs/html"
