#!/bin/sh
# Prepare a USB provisioning stick for one box: a signed MGW-PROVISION.bundle at the root.
#
#   provisioning/prepare-usb.sh --config /etc/gateway/cloud.toml --signing-key KEY \
#       --box ID --site SITE --modality MOD [--site-config TOML] [--ttl-hours H] \
#       (--device /dev/sdX1 | --dir MOUNTED_DIR)
#
# With --device the partition is mounted on a temporary directory, the bundle written,
# synced and the partition unmounted. With --dir the bundle goes into an already mounted
# stick (or any directory, for testing). The stick may carry other files; the box reads
# only MGW-PROVISION.bundle. Run it where the fleet CA lives (it creates the one-time token).
set -eu

usage() { sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
MGW=${MGW:-mgw}
config="" key="" box="" site="" modality="" site_config="" ttl="" device="" dir=""
while [ $# -gt 0 ]; do
    case "$1" in
        --config) config=$2; shift 2 ;;
        --signing-key) key=$2; shift 2 ;;
        --box) box=$2; shift 2 ;;
        --site) site=$2; shift 2 ;;
        --modality) modality=$2; shift 2 ;;
        --site-config) site_config=$2; shift 2 ;;
        --ttl-hours) ttl=$2; shift 2 ;;
        --device) device=$2; shift 2 ;;
        --dir) dir=$2; shift 2 ;;
        -h|--help) usage ;;
        *) echo "prepare-usb: unknown option $1" >&2; usage ;;
    esac
done
[ -n "$key" ] && [ -n "$box" ] && [ -n "$site" ] && [ -n "$modality" ] || usage
[ -n "$device" ] || [ -n "$dir" ] || usage

work=$(mktemp -d)
mounted=""
cleanup() {
    if [ -n "$mounted" ]; then umount "$mounted" 2>/dev/null || true; rmdir "$mounted" 2>/dev/null || true; fi
    rm -rf "$work"
}
trap cleanup EXIT INT TERM

set -- --signing-key "$key" --box "$box" --site "$site" --modality "$modality" --out "$work/MGW-PROVISION.bundle"
[ -z "$config" ] || set -- "$@" --config "$config"
[ -z "$site_config" ] || set -- "$@" --site-config "$site_config"
[ -z "$ttl" ] || set -- "$@" --ttl-hours "$ttl"
"$MGW" cloud bundle "$@"

if [ -n "$device" ]; then
    mounted=$(mktemp -d)
    mount "$device" "$mounted"
    dir=$mounted
fi
cp "$work/MGW-PROVISION.bundle" "$dir/MGW-PROVISION.bundle"
sync
echo "prepare-usb: $dir/MGW-PROVISION.bundle ready for box $box (one use; expires as the token does)"
