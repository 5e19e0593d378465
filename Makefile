# pg_shipsync — build with PGXS
PG_CONFIG ?= pg_config
MODULE_big = pg_shipsync
OBJS = \
	src/pg_shipsync.o \
	src/launcher.o src/flush.o \
	src/dispatcher.o src/applier.o src/yield.o src/cpuroom.o src/hugeheap.o src/prefault.o \
	src/outbox.o src/apply.o \
	src/http.o \
	src/json.o \
	src/retry.o \
	src/capture.o \
	src/tracking.o src/signature.o src/poller.o \
	src/fees.o src/statement.o src/feepull.o src/csv.o src/money.o \
	src/mapping.o src/sign.o src/dialect.o src/validate.o \
	src/dialects/generic.o src/dialects/sf_express.o src/dialects/kuaidi100.o \
	src/dialects/easypost.o src/dialects/aftership.o src/dialects/shared.o \
	src/spi.o src/provider.o src/writeback.o \
	src/security.o src/filter.o src/asowner.o \
	src/crm.o src/receiver.o \
	src/crypto.o src/secret.o src/redact.o \
	src/hostcheck.o \
	src/mask.o src/privacy.o src/audit.o \
	src/health.o src/poison.o \
	src/digest.o src/body.o src/reconcile.o src/recon_worker.o

EXTENSION = pg_shipsync
# 0.1 is released and never changes; 0.2, the version under work, is built
# from the parts in install/ (one per concern, privileges last), and
# pg_shipsync--0.1--0.2.sql brings a 0.1 install to it (test/t/014_upgrade.pl
# keeps the two equal).
EXTVERSION = 0.2
INSTALL_PARTS = $(sort $(wildcard $(srcdir)/install/*.sql))
DATA = pg_shipsync--0.1.sql pg_shipsync--0.1--0.2.sql
DATA_built = pg_shipsync--$(EXTVERSION).sql
PGFILEDESC = "pg_shipsync - CRM orders to logistics providers"

PG_CPPFLAGS += -I$(srcdir)/src $(shell pkg-config --cflags libcurl json-c openssl libmicrohttpd)
# PostgreSQL's headers as system headers: -Wextra then judges our code only.
# Unused parameters are the norm in callbacks (fmgr, libcurl, shmem exit).
PG_CPPFLAGS += -isystem $(shell $(PG_CONFIG) --includedir-server)
PG_CFLAGS += -Wno-unused-parameter -Wno-missing-field-initializers
SHLIB_LINK += $(shell pkg-config --libs libcurl json-c openssl libmicrohttpd)

# pg_regress and isolation run against a temporary instance that preloads us
REGRESS = api errors capture mapping outbound tracking security crm secrets privacy audit fees reconcile
REGRESS_OPTS = --temp-instance=./tmp_check --temp-config=$(srcdir)/test/regress.conf
ISOLATION = claim_race tracking_race name_race statement_race secret_race attach_race
ISOLATION_OPTS = --inputdir=$(srcdir)/test --temp-instance=./tmp_check_iso --temp-config=$(srcdir)/test/regress.conf
TAP_TESTS = 1
PROVE_TESTS = test/t/*.pl

PGXS := $(shell $(PG_CONFIG) --pgxs)
include $(PGXS)

pg_shipsync--$(EXTVERSION).sql: $(INSTALL_PARTS) Makefile
	{ printf '/* pg_shipsync--$(EXTVERSION).sql: generated from the parts in install/, do not edit */\n\n'; \
	  printf '\\echo Use "CREATE EXTENSION pg_shipsync" to load this file. \\quit\n'; \
	  for f in $(INSTALL_PARTS); do printf '\n'; cat $$f; done; } > $@

# PGXS does not track header dependencies: every object depends on ours
$(OBJS): src/pg_shipsync.h src/dispatcher.h
