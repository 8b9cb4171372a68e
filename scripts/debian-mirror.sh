# shellcheck shell=bash
# debian_mirror prints the Debian mirror this machine's apt sources name
# (deb822 .sources first, then one-line .list files; security archives
# skipped), or fails when there is none. Sourced by the rootfs scripts, so
# that no mirror's name is written into the repository.
debian_mirror() {
	local f mirror=""
	for f in /etc/apt/sources.list.d/*.sources; do
		[ -f "$f" ] || continue
		mirror=$(awk '/^URIs:/ && $2 !~ /security/ {print $2; exit}' "$f")
		[ -n "$mirror" ] && break
	done
	if [ -z "$mirror" ]; then
		mirror=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null |
			awk '$1 == "deb" && $0 !~ /security/ {for (i = 2; i <= NF; i++) if ($i ~ /^[a-z]+:\/\//) {print $i; exit}}')
	fi
	[ -n "$mirror" ] || return 1
	echo "$mirror"
}
