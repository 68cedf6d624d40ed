//! The fleet's counters in Redis: one Lua script per exchange, so that an exchange is
//! atomic (every proxy's consumption is added to the same `tat`, and the change log and
//! the answer agree) and costs one round trip. `EVALSHA`, with `SCRIPT LOAD` when Redis
//! does not have the script (a restarted Redis), as `redis::Script` does.
//!
//! The algorithm is GCRA's, as the plugin's limiter (`core/src/limit/mod.rs`) runs it:
//! each (limit, caller, kind) has a theoretical arrival time `tat`; `n` requests move it
//! to `max(tat, now) + n·T`, `T = period / requests`. The fleet's `tat` is capped at
//! `now + max(2, proxies + 1)·max(period, burst·T)`: a burst at every proxy at once (the
//! most the fleet can admit beyond the limit, docs/fleet.md) is owed in full, and nothing
//! is owed for longer than that (ten years at most). Time
//! is Redis's (`TIME`, µs): proxies get `tat − now` back, never an absolute time, so
//! their clocks need not agree with each other or with Redis.
//!
//! Layout, every key under [`KEY_PREFIX`] (`gatehouse:fleet:`):
//!
//! | key | type | holds |
//! |---|---|---|
//! | `t:<member>` | string | the member's `tat` (µs); expires `margin` after it |
//! | `changes` | zset | member → the sequence number of its last change |
//! | `expiry` | zset | member → when its `tat` key expires (µs) |
//! | `seq` | string | the last sequence number given out (`INCRBY`) |
//! | `epoch` | string | when the change log began (µs); a cursor of another epoch starts over |
//! | `proxies` | zset | proxy → when it last exchanged (µs) |
//!
//! A member is the JSON array `[kind, limit, caller]` (`fleet.rs`, `Member`). Redis
//! memory stays proportional to the live callers: a lapsed member's `tat` key expires by
//! itself, and each exchange removes up to `prune` lapsed members from `changes` and
//! `expiry` (oldest expiry first), so they are emptied faster than callers can lapse
//! unless a fleet's callers lapse faster than `prune` per exchange. One Redis, not a
//! Cluster: the script touches keys it computes.

use super::{Cursor, Exchange, ExchangeOut, FleetError, Member, StateOut, Tuning};
use ::redis::aio::{ConnectionManager, ConnectionManagerConfig};
use ::redis::{Client, RedisError, Script};
use std::sync::Mutex;

/// Where every key of the fleet lives.
pub const KEY_PREFIX: &str = "gatehouse:fleet:";

/// Numbers go to Redis as integer strings: Lua's own number-to-string (`%.14g`) would
/// round times in µs, which have 16 digits.
const SCRIPT: &str = r"
local p = ARGV[1]
local proxy = ARGV[2]
local cursor_epoch = ARGV[3]
local cursor = tonumber(ARGV[4]) or 0
local page = tonumber(ARGV[5])
local prune = tonumber(ARGV[6])
local window = tonumber(ARGV[7])
local margin = tonumber(ARGV[8])
local max_cap = 10 * 365 * 86400 * 1000000
local first = 9

local function num(x) return string.format('%.0f', x) end

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local seq_key, changes, expiry = p .. 'seq', p .. 'changes', p .. 'expiry'

redis.call('SET', p .. 'epoch', num(now), 'NX')
local epoch = redis.call('GET', p .. 'epoch')
if epoch ~= cursor_epoch then cursor = 0 end

local proxies = p .. 'proxies'
redis.call('ZADD', proxies, num(now), proxy)
redis.call('ZREMRANGEBYSCORE', proxies, '-inf', '(' .. num(now - window))
local seen = redis.call('ZCARD', proxies)

-- Lapsed members: their tat key has expired (or expires now) with them.
local lapsed = redis.call('ZRANGEBYSCORE', expiry, '-inf', num(now), 'LIMIT', 0, prune)
if #lapsed > 0 then
  redis.call('ZREM', changes, unpack(lapsed))
  redis.call('ZREM', expiry, unpack(lapsed))
  for _, m in ipairs(lapsed) do redis.call('DEL', p .. 't:' .. m) end
end

local used = (#ARGV - first + 1) / 4
local seq
if used > 0 then
  seq = redis.call('INCRBY', seq_key, used)
else
  seq = tonumber(redis.call('GET', seq_key) or '0')
end
local base = seq - used
for i = 0, used - 1 do
  local a = first + i * 4
  local m, n, interval, cap = ARGV[a], tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3])
  local key = p .. 't:' .. m
  local tat = tonumber(redis.call('GET', key) or '0') or 0
  if tat < now then tat = now end
  tat = math.min(tat + n * interval, now + math.min(cap * math.max(2, seen + 1), max_cap))
  redis.call('SET', key, num(tat), 'PX', num(math.ceil((tat - now + margin) / 1000)))
  redis.call('ZADD', changes, num(base + i + 1), m)
  redis.call('ZADD', expiry, num(tat + margin), m)
end

if cursor > seq then cursor = 0 end
local rows = redis.call('ZRANGEBYSCORE', changes, '(' .. num(cursor), '+inf', 'WITHSCORES', 'LIMIT', 0, page + 1)
local more = #rows / 2 > page
local count = math.min(#rows / 2, page)
local last = cursor
local states = {}
for i = 1, count do
  local m = rows[2 * i - 1]
  last = tonumber(rows[2 * i])
  local tat = tonumber(redis.call('GET', p .. 't:' .. m) or '0') or 0
  if tat > now then states[#states + 1] = {m, tat - now} end
end
if not more then last = seq end
return {epoch, num(last), more and 1 or 0, seen, states}
";

/// The script's answer: epoch, cursor, more, proxies, `[member, ahead_us]` pairs.
type Answer = (String, String, i64, i64, Vec<(String, i64)>);

/// The connection to Redis, made on first use and made again after any failure.
pub struct RedisFleet {
    client: Client,
    tuning: Tuning,
    script: Script,
    conn: Mutex<Option<ConnectionManager>>,
}

impl RedisFleet {
    /// Reads the URL; connects nowhere. The error never quotes the URL.
    pub fn new(url: &str, tuning: Tuning) -> Result<RedisFleet, String> {
        // Redis's message is left out: it may quote the URL.
        let client = Client::open(url).map_err(|_| {
            "GATEHOUSE_REDIS_URL must be a redis:// or redis+unix:// URL".to_string()
        })?;
        Ok(RedisFleet {
            client,
            tuning,
            script: Script::new(SCRIPT),
            conn: Mutex::new(None),
        })
    }

    /// The connection, a new one if the last failed. Lazy: the first command connects.
    fn connection(&self) -> Result<ConnectionManager, FleetError> {
        let mut slot = self
            .conn
            .lock()
            .map_err(|_| FleetError::Failed("connection lock poisoned".to_string()))?;
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        // One quick retry: a proxy asks again on its next tick anyway, 250 ms later, and
        // a request must not wait out a long back-off.
        let config = ConnectionManagerConfig::new()
            .set_number_of_retries(1)
            .set_connection_timeout(Some(self.tuning.connect_timeout))
            .set_response_timeout(Some(self.tuning.response_timeout));
        let c = ConnectionManager::new_lazy_with_config(self.client.clone(), config)
            .map_err(|e| FleetError::Unreachable(describe(&e)))?;
        *slot = Some(c.clone());
        Ok(c)
    }

    /// Drops the connection after a failure: the next exchange connects anew, whatever
    /// the failure was (the manager itself reconnects only after some kinds of error).
    fn forget(&self) {
        if let Ok(mut slot) = self.conn.lock() {
            *slot = None;
        }
    }

    pub async fn exchange(&self, ex: &Exchange) -> Result<ExchangeOut, FleetError> {
        let mut conn = self.connection()?;
        let t = &self.tuning;
        let mut call = self.script.prepare_invoke();
        let cursor = ex.cursor.as_ref();
        call.arg(KEY_PREFIX)
            .arg(&ex.proxy)
            .arg(cursor.map_or("", |c| c.epoch.as_str()))
            .arg(cursor.map_or(0, |c| c.seq))
            .arg(t.page)
            .arg(t.prune)
            .arg(micros(t.proxy_window))
            .arg(micros(t.margin));
        for u in &ex.used {
            call.arg(&u.member)
                .arg(u.n)
                .arg(u.interval_us)
                .arg(u.cap_us);
        }
        let answer: Answer = match call.invoke_async(&mut conn).await {
            Ok(a) => a,
            Err(e) => {
                self.forget();
                return Err(if is_unreachable(&e) {
                    FleetError::Unreachable(describe(&e))
                } else {
                    FleetError::Failed(describe(&e))
                });
            }
        };
        let (epoch, seq, more, proxies, rows) = answer;
        let seq: u64 = seq
            .parse()
            .map_err(|_| FleetError::Failed("the script's cursor is not a number".to_string()))?;
        let states = rows
            .into_iter()
            .filter_map(|(member, ahead)| {
                // Only this service writes members; anything else in the keys is skipped.
                let m = Member::decode(&member)?;
                Some(StateOut {
                    limit: m.limit,
                    caller: m.caller,
                    kind: m.kind.as_str(),
                    ahead_us: u64::try_from(ahead).ok().filter(|a| *a > 0)?,
                })
            })
            .collect();
        Ok(ExchangeOut {
            cursor: Cursor { epoch, seq }.encode(),
            more: more != 0,
            proxies: u64::try_from(proxies).unwrap_or(0),
            states,
        })
    }
}

fn micros(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// No connection or no answer, as opposed to an answer that is an error (a wrong
/// password, a script error, Redis out of memory), which the log tells apart.
fn is_unreachable(e: &RedisError) -> bool {
    e.is_io_error() || e.is_timeout() || e.is_connection_dropped() || e.is_connection_refusal()
}

/// The error for the log: its kind and Redis's message, which hold neither the URL nor
/// a password.
fn describe(e: &RedisError) -> String {
    e.to_string()
}
