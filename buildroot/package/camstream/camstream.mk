################################################################################
#
# camstream
#
################################################################################

CAMSTREAM_VERSION = 0.1.0
CAMSTREAM_SITE = $(BR2_EXTERNAL_CAMSTREAM_PATH)/..
CAMSTREAM_SITE_METHOD = local
CAMSTREAM_LICENSE = MIT or Apache-2.0
CAMSTREAM_DEPENDENCIES = \
	host-pkgconf \
	gstreamer1 \
	gst1-plugins-base \
	gst1-plugins-bad \
	gst1-rtsp-server \
	openssl
CAMSTREAM_CARGO_BUILD_OPTS = --bin camstream
CAMSTREAM_OVERRIDE_SRCDIR_RSYNC_EXCLUSIONS = \
	--exclude target --exclude signal --exclude web --exclude tests/node \
	--exclude .git

# Buildroot vendors crates only for downloaded sources; a local source
# brings its own vendor/ (scripts/vendor), checked against Cargo.lock.
define CAMSTREAM_USE_VENDORED_CRATES
	@test -d $(@D)/vendor || { \
		echo "camstream: no vendor/ in the source: run scripts/vendor first"; \
		exit 1; }
	mkdir -p $(@D)/.cargo
	printf '[source.crates-io]\nreplace-with = "vendored-sources"\n[source.vendored-sources]\ndirectory = "vendor"\n' \
		> $(@D)/.cargo/config.toml
endef
CAMSTREAM_POST_RSYNC_HOOKS += CAMSTREAM_USE_VENDORED_CRATES

$(eval $(cargo-package))
