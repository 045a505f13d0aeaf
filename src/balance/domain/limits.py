"""Every limit the rules enforce, named once (qualifier last: ``amount_max``)."""

AMOUNT_MIN = 1
AMOUNT_MAX = 2**62
# A non-system account's balance, reserved sum and credit limit stay within +-BALANCE_MAX:
# far from the 64-bit edge, so no sum of them a rule computes can overflow a BIGINT. System
# accounts (funding, settlement, transit) take the other side of every account and have no
# bound: they are stored exactly (DECIMAL(39,0), or an exact encoding in SQLite).
BALANCE_MAX = 2**62
CREDIT_LIMIT_MAX = 2**62
BATCH_OPERATIONS_MAX = 8190
ENGINE_BATCH_MAX = 8190  # commands applied and committed together by one shard writer
EXPIRES_IN_S_DEFAULT = 900
EXPIRES_IN_S_MIN = 1
EXPIRES_IN_S_MAX = 604_800
OPERATION_ID_LENGTH_MAX = 64
NAME_LENGTH_MAX = 200
DESCRIPTION_LENGTH_MAX = 500
METADATA_BYTES_MAX = 4096
HISTORY_LIMIT_DEFAULT = 100
HISTORY_LIMIT_MAX = 1000
EVENTS_LIMIT_DEFAULT = 100  # GET /v1/events
EVENTS_LIMIT_MAX = 1000
EVENTS_WAIT_S_MAX = 30  # the longest long-poll
CHILDREN_LIMIT_MAX = 1000
IDEMPOTENCY_CACHE_ENTRIES = 200_000  # recent outcomes kept in memory; older ones are read back
FINISHED_HOLDS_CACHE_ENTRIES = 100_000
