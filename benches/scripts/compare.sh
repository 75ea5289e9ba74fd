#!/usr/bin/env bash
# Columns: wall and CPU (user+sys) seconds, MB/s and ClientHellos/s of wall time, peak RSS,
# JA4 records printed, HaIS speedup over the peer by wall and by CPU time, HaIS/peer RSS.
#
# Times `hais-agent read` against the FoxIO reference `ja4` (with tshark) and Suricata 7.0
# (JA4 on, no rules, single thread) on the same capture files, and prints wall time, MB/s,
# ClientHellos/s, CPU time, peak RSS and the HaIS/peer ratios.
#
# usage: benches/scripts/compare.sh [FILE...]
#
# With no FILE it uses $BENCH_DIR/bench-1g.pcap, generating it first with make-capture
# (size $SIZE, default 1G, seed $SEED, default 1) if it does not exist.
#
# Environment:
#   HAIS_BIN       hais-agent binary (default: target/release/hais-agent, built if missing)
#   JA4_REF_BIN    the reference `ja4` binary (FoxIO-LLC/ja4, rust/ja4); tshark must be on
#                  PATH. Unset: the reference is skipped. Nothing of it is built here.
#   SURICATA_BIN   Suricata 7.0 binary (default: `suricata` on PATH; skipped if absent)
#   BENCH_DIR      where generated captures and outputs go (default: target/bench-captures)
#   SIZE, SEED     for the generated default file
#   WITH_HANDSHAKES=1  also generate and time a handshakes-only file (HS_SIZE, default 256M)
#   RUNS           runs of HaIS and Suricata per file, best wall time kept (default 3)
#   REF_RUNS       runs of the reference per file (default 1: it is slow)
#   NICE           nice level for every timed run (default 10)
#   REF_TIMEOUT    seconds before the reference run is abandoned (default 3600)
#   SKIP_REF=1, SKIP_SURICATA=1   skip a peer
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
BENCH_DIR=${BENCH_DIR:-$ROOT/target/bench-captures}
HAIS_BIN=${HAIS_BIN:-$ROOT/target/release/hais-agent}
MAKE_CAPTURE=${MAKE_CAPTURE:-$ROOT/target/release/make-capture}
SIZE=${SIZE:-1G}
SEED=${SEED:-1}
HS_SIZE=${HS_SIZE:-256M}
RUNS=${RUNS:-3}
REF_RUNS=${REF_RUNS:-1}
NICE=${NICE:-10}
REF_TIMEOUT=${REF_TIMEOUT:-3600}
SURICATA_BIN=${SURICATA_BIN:-$(command -v suricata || true)}
TIME=/usr/bin/time

die() { echo "compare.sh: $*" >&2; exit 1; }
[ -x "$TIME" ] || die "$TIME not found (apt-get install time)"
mkdir -p "$BENCH_DIR"

if [ ! -x "$HAIS_BIN" ] || [ ! -x "$MAKE_CAPTURE" ]; then
    echo "== building hais-agent and make-capture (release)" >&2
    (cd "$ROOT" && cargo build --release -p hais-agent -p hais-benches --bins >&2)
fi

gen() { # gen FILE [make-capture args...]
    local f=$1; shift
    if [ ! -s "$f" ] || [ ! -s "$f.stats.json" ]; then
        echo "== generating $f" >&2
        "$MAKE_CAPTURE" -o "$f" --seed "$SEED" "$@" >/dev/null
    fi
}

FILES=("$@")
if [ ${#FILES[@]} -eq 0 ]; then
    gen "$BENCH_DIR/bench-1g.pcap" --size "$SIZE"
    FILES=("$BENCH_DIR/bench-1g.pcap")
    if [ "${WITH_HANDSHAKES:-0}" = 1 ]; then
        gen "$BENCH_DIR/handshakes.pcap" --size "$HS_SIZE" --handshakes-only
        FILES+=("$BENCH_DIR/handshakes.pcap")
    fi
fi

OUT=$(mktemp -d "${TMPDIR:-/tmp}/hais-compare.XXXXXX")
trap 'rm -rf "$OUT"' EXIT

# Suricata: JA4 only (JA3 off), no rules, eve output of tls/quic records with ja4, nothing
# else logged. App-layer parsers keep their defaults.
cat > "$OUT/suricata.yaml" <<'EOF'
%YAML 1.1
---
vars:
  address-groups:
    HOME_NET: "[10.0.0.0/8,172.16.0.0/12,192.168.0.0/16,fd00::/8]"
    EXTERNAL_NET: "!$HOME_NET"
  port-groups:
    HTTP_PORTS: "80"
    SHELLCODE_PORTS: "!80"
    SSH_PORTS: "22"
outputs:
  - eve-log:
      enabled: yes
      filetype: regular
      filename: eve.json
      types:
        - tls:
            extended: no
            ja4: on
        - quic:
            ja4: on
  - stats:
      enabled: no
app-layer:
  protocols:
    tls:
      enabled: yes
      detection-ports:
        dp: 443
      ja3-fingerprints: no
      ja4-fingerprints: yes
    quic:
      enabled: yes
logging:
  default-log-level: notice
  outputs:
    - console:
        enabled: yes
EOF

cpus() { nproc; }
loadavg() { cut -d' ' -f1-3 /proc/loadavg; }

# run_timed NAME LOGFILE CMD... : runs under /usr/bin/time -v and nice; sets
# WALL (s), CPU (s, user+sys), RSS (MB), RC.
run_timed() {
    local name=$1 log=$2; shift 2
    local tv="$OUT/$name.time"
    set +e
    "$TIME" -v -o "$tv" nice -n "$NICE" "$@" >"$log" 2>"$log.err"
    RC=$?
    set -e
    WALL=$(awk -F': ' '/Elapsed \(wall clock\)/ {
        n = split($2, p, ":"); s = 0; for (i = 1; i <= n; i++) s = s * 60 + p[i]; print s }' "$tv")
    CPU=$(awk -F': ' '/User time/ {u=$2} /System time/ {s=$2} END {printf "%.2f", u+s}' "$tv")
    RSS=$(awk -F': ' '/Maximum resident set size/ {printf "%.1f", $2/1024}' "$tv")
}

# best_of N NAME LOGFILE CMD... : N runs, keeps the fastest (BEST_*).
best_of() {
    local n=$1 name=$2 log=$3; shift 3
    BEST_WALL=""; BEST_CPU=""; BEST_RSS=""; BEST_RC=0; ALL=""
    for _ in $(seq "$n"); do
        run_timed "$name" "$log" "$@"
        ALL="$ALL $WALL"
        if [ "$RC" -ne 0 ]; then BEST_RC=$RC; fi
        if [ -z "$BEST_WALL" ] || awk "BEGIN{exit !($WALL < $BEST_WALL)}"; then
            BEST_WALL=$WALL; BEST_CPU=$CPU; BEST_RSS=$RSS
        fi
    done
}

fmt_row() { # tool wall cpu rss ja4s  (uses SIZE_B, CH, HAIS_WALL, HAIS_CPU, HAIS_RSS)
    awk -v t="$1" -v w="$2" -v c="$3" -v r="$4" -v n="$5" -v b="$SIZE_B" -v ch="$CH" \
        -v hw="${HAIS_WALL:-}" -v hc="${HAIS_CPU:-}" -v hr="${HAIS_RSS:-}" 'BEGIN {
        mbs = b / 1e6 / w; chs = ch / w
        tw = (t != "hais") ? sprintf("%.1fx", w / hw) : "-"
        tc = (t != "hais" && hc > 0) ? sprintf("%.1fx", c / hc) : "-"
        rr = (t != "hais") ? sprintf("%.2f", hr / r) : "-"
        printf "| %-9s | %8.2f | %7.2f | %8.1f | %13.0f | %7.1f | %6s | %9s | %9s | %8s |\n",
            t, w, c, mbs, chs, r, n, tw, tc, rr }'
}

HEADER="| tool      | wall s   | cpu s   | MB/s     | ClientHello/s | RSS MB  | ja4s   | x (wall)  | x (cpu)   | RSS H/p  |
|-----------|----------|---------|----------|---------------|---------|--------|-----------|-----------|----------|"

echo "== machine: $(cpus) cores, $(grep -m1 "model name" /proc/cpuinfo | cut -d: -f2 | xargs), $(uname -r), load $(loadavg), nice $NICE, best of $RUNS (reference: $REF_RUNS)"
echo "== hais: $("$HAIS_BIN" --version 2>/dev/null || echo "$HAIS_BIN")"
[ -n "${JA4_REF_BIN:-}" ] && echo "== reference: $JA4_REF_BIN ($(command -v tshark >/dev/null && tshark --version 2>/dev/null | head -1 || echo 'tshark NOT on PATH'))"
[ -n "$SURICATA_BIN" ] && echo "== suricata: $("$SURICATA_BIN" -V 2>/dev/null | head -1)"

for F in "${FILES[@]}"; do
    [ -s "$F" ] || die "$F: no such file"
    SIZE_B=$(stat -c %s "$F")
    CH=""
    if [ -s "$F.stats.json" ]; then
        CH=$(sed -n 's/.*"client_hellos":\([0-9]*\).*/\1/p' "$F.stats.json")
    fi
    # Warm the page cache so every tool reads the file from memory.
    cat "$F" >/dev/null

    echo
    echo "### $(basename "$F"): $(awk -v b="$SIZE_B" 'BEGIN{printf "%.1f MB", b/1e6}')${CH:+, $CH ClientHellos}"

    # Whole run of HaIS alone.
    best_of "$RUNS" hais "$OUT/hais.jsonl" "$HAIS_BIN" read "$F" --json --quiet --no-progress
    [ "$BEST_RC" -eq 0 ] || { cat "$OUT/hais.jsonl.err" >&2; die "hais-agent failed (rc $BEST_RC)"; }
    HAIS_WALL=$BEST_WALL HAIS_RSS=$BEST_RSS HAIS_CPU=$BEST_CPU
    HAIS_JA4=$(grep -c '"ja4":' "$OUT/hais.jsonl" || true)
    [ -n "$CH" ] || CH=$HAIS_JA4
    echo "HaIS whole run: wall ${HAIS_WALL}s (runs:$ALL), cpu ${HAIS_CPU}s, $(awk -v b="$SIZE_B" -v w="$HAIS_WALL" 'BEGIN{printf "%.0f MB/s", b/1e6/w}'), peak RSS ${HAIS_RSS} MB, $(wc -l <"$OUT/hais.jsonl") streams, $HAIS_JA4 with ja4"
    echo
    echo "$HEADER"
    fmt_row hais "$HAIS_WALL" "$HAIS_CPU" "$HAIS_RSS" "$HAIS_JA4"

    if [ -n "$SURICATA_BIN" ] && [ "${SKIP_SURICATA:-0}" != 1 ]; then
        mkdir -p "$OUT/suri"
        rm -f "$OUT/suri/eve.json"
        best_of "$RUNS" suricata "$OUT/suri.log" "$SURICATA_BIN" -c "$OUT/suricata.yaml" \
            -r "$F" --runmode single -S /dev/null -l "$OUT/suri"
        if [ "$BEST_RC" -eq 0 ]; then
            N=$(grep -c '"ja4":' "$OUT/suri/eve.json" 2>/dev/null || true)
            # eve.json is appended to on each run
            N=$(( N / RUNS ))
            fmt_row suricata "$BEST_WALL" "$BEST_CPU" "$BEST_RSS" "$N"
        else
            echo "| suricata  | failed (rc $BEST_RC), see below |"
            tail -5 "$OUT/suri.log.err" >&2
        fi
    else
        echo "| suricata  | skipped: SURICATA_BIN unset and no suricata on PATH |"
    fi

    if [ -n "${JA4_REF_BIN:-}" ] && [ "${SKIP_REF:-0}" != 1 ]; then
        best_of "$REF_RUNS" reference "$OUT/ref.jsonl" timeout "$REF_TIMEOUT" "$JA4_REF_BIN" --json "$F"
        if [ "$BEST_RC" -eq 0 ]; then
            N=$(grep -c '"ja4":' "$OUT/ref.jsonl" || true)
            fmt_row reference "$BEST_WALL" "$BEST_CPU" "$BEST_RSS" "$N"
        else
            echo "| reference | failed or timed out (rc $BEST_RC) after ${BEST_WALL}s, peak RSS ${BEST_RSS} MB |"
            tail -5 "$OUT/ref.jsonl.err" >&2
        fi
    else
        echo "| reference | skipped: set JA4_REF_BIN to the FoxIO ja4 binary (tshark on PATH) |"
    fi
    echo "(load after: $(loadavg))"
done
