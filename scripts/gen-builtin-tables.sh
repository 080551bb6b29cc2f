#!/usr/bin/env bash
# Regenerates the compact kernel table of the built-in demo (build 20348) from the real
# Volatility table. Needs ../shared beside the repository (or SHARED=DIR). Never edit the output.
set -euo pipefail
cd "$(dirname "$0")/.."
shared="${SHARED:-../shared}"
table="$shared/symbols/ntkrnlmp.pdb/C2EADB24A615E9472CE47C8ADD31F130-1.json.xz"
cargo run --release -q -p kdnet-sim --example gen_demo_table -- "$table" symbols/builtin/ntkrnlmp-20348-demo.json
cargo run --release -q -p kdnet-sim --example gen_ndis_table -- "$shared/pdbs/ndis.pdb" symbols/builtin/ndis.json
