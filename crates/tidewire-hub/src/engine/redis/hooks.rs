//! The hook log on Redis ([`HookLog`]): one stream of events read by a consumer group of
//! the nodes, and each node's registry of sessions and occupied channels, changed with the
//! events in one script.
//!
//! | key | type | what |
//! |---|---|---|
//! | `tw:{hooks}:events` | stream | events (field `e`: the JSON without its id; the entry id is the event's id), group `hooks` |
//! | `tw:{hooks}:N:s` | hash | node N's sessions `c\0CLIENT` and subscriptions `s\0CLIENT\0CHANNEL` → user |
//! | `tw:{hooks}:N:o` | set | channels node N has subscribers of |
//! | `tw:{hooks}:o:C` | set | nodes that have subscribers of channel C |
//!
//! Every key has the tag `{hooks}`: one slot on a cluster, so that each script touches one.

use super::{redis_error, RedisEngine};
use crate::engine::{EngineFuture, Error, HookEntry, HookLog, HookOp, ReapEvents};
use redis::streams::{StreamAutoClaimReply, StreamReadReply};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

const EVENTS: &str = "tw:{hooks}:events";
const GROUP: &str = "hooks";
/// Events the stream keeps at most (about: trimmed with `~`).
const MAXLEN: u64 = 1_000_000;

fn sessions(node: &str) -> String {
    format!("tw:{{hooks}}:{node}:s")
}

fn occupied(node: &str) -> String {
    format!("tw:{{hooks}}:{node}:o")
}

/// Records ops. KEYS: events, the node's sessions, its channels. ARGV: node, maxlen, then
/// per op: kind (c d s u o v), client, user ('' for none), channel, event ('' for none; for
/// o and v: '1' to emit).
const RECORD: &str = r#"
local function ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function emit(e)
  redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*', 'e', e)
end
local i = 3
while i + 4 <= #ARGV do
  local k, client, user, channel, ev = ARGV[i], ARGV[i+1], ARGV[i+2], ARGV[i+3], ARGV[i+4]
  if k == 'c' then
    redis.call('HSET', KEYS[2], 'c\0' .. client, user)
  elseif k == 'd' then
    redis.call('HDEL', KEYS[2], 'c\0' .. client)
  elseif k == 's' then
    redis.call('HSET', KEYS[2], 's\0' .. client .. '\0' .. channel, user)
  elseif k == 'u' then
    redis.call('HDEL', KEYS[2], 's\0' .. client .. '\0' .. channel)
  elseif k == 'o' then
    redis.call('SADD', KEYS[3], channel)
    local ck = 'tw:{hooks}:o:' .. channel
    local added = redis.call('SADD', ck, ARGV[1])
    if added == 1 and redis.call('SCARD', ck) == 1 and ev ~= '' then
      emit(cjson.encode({type = 'occupied', time = ms(), node = ARGV[1], channel = channel}))
    end
    ev = ''
  elseif k == 'v' then
    redis.call('SREM', KEYS[3], channel)
    local ck = 'tw:{hooks}:o:' .. channel
    local removed = redis.call('SREM', ck, ARGV[1])
    if removed == 1 and redis.call('SCARD', ck) == 0 and ev ~= '' then
      emit(cjson.encode({type = 'vacated', time = ms(), node = ARGV[1], channel = channel}))
    end
    ev = ''
  end
  if ev ~= '' then emit(ev) end
  i = i + 5
end
return 0
"#;

/// Emits a dead node's events for (part of) what its registry holds, and forgets that
/// part. KEYS: events, the dead node's sessions, its channels. ARGV: the dead node, maxlen,
/// how many at most, the reaping node, and '1' or '' for: disconnect, unsubscribe, vacated.
/// Returns how many sessions, subscriptions and channels it reaped (0: nothing left).
const REAP: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local function emit(e)
  redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*', 'e', cjson.encode(e))
end
local function who(user)
  if user == '' then return cjson.null end
  return user
end
local n = 0
local cursor, fields = '0', {}
repeat
  local res = redis.call('HSCAN', KEYS[2], cursor, 'COUNT', ARGV[3])
  cursor, fields = res[1], res[2]
until #fields > 0 or cursor == '0'
local conns = {}
for j = 1, #fields, 2 do
  local f, user = fields[j], fields[j + 1]
  if string.sub(f, 1, 1) == 's' then
    local rest = string.sub(f, 3)
    local sep = string.find(rest, '\0', 1, true)
    if sep and ARGV[6] == '1' then
      emit({type = 'unsubscribe', time = now, node = ARGV[1], client = string.sub(rest, 1, sep - 1),
            user = who(user), channel = string.sub(rest, sep + 1), reason = 'node lost',
            reaped_by = ARGV[4]})
    end
    redis.call('HDEL', KEYS[2], f)
    n = n + 1
  else
    table.insert(conns, {f, user})
  end
end
for _, c in ipairs(conns) do
  if ARGV[5] == '1' then
    emit({type = 'disconnect', time = now, node = ARGV[1], client = string.sub(c[1], 3),
          user = who(c[2]), code = 1006, reason = 'node lost', reaped_by = ARGV[4]})
  end
  redis.call('HDEL', KEYS[2], c[1])
  n = n + 1
end
if #fields == 0 then
  local chans = redis.call('SPOP', KEYS[3], ARGV[3])
  for _, channel in ipairs(chans) do
    local ck = 'tw:{hooks}:o:' .. channel
    local removed = redis.call('SREM', ck, ARGV[1])
    if removed == 1 and redis.call('SCARD', ck) == 0 and ARGV[7] == '1' then
      emit({type = 'vacated', time = now, node = ARGV[1], channel = channel, reason = 'node lost',
            reaped_by = ARGV[4]})
    end
    n = n + 1
  end
end
return n
"#;

/// The hook log of a [`RedisEngine`] (on its first shard, where the node registry is).
#[derive(Debug)]
pub struct RedisHookLog {
    engine: Arc<RedisEngine>,
    group_ready: std::sync::atomic::AtomicBool,
}

impl RedisHookLog {
    pub fn new(engine: Arc<RedisEngine>) -> Arc<RedisHookLog> {
        Arc::new(RedisHookLog {
            engine,
            group_ready: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Creates the consumer group (and the stream) unless it exists.
    async fn ensure_group(&self) -> Result<(), Error> {
        use std::sync::atomic::Ordering::Relaxed;
        if self.group_ready.load(Relaxed) {
            return Ok(());
        }
        let made: Result<(), redis::RedisError> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(EVENTS)
            .arg(GROUP)
            .arg("0")
            .arg("MKSTREAM")
            .query_async(&mut self.engine.registry())
            .await;
        match made {
            Ok(()) => {}
            Err(e) if e.code() == Some("BUSYGROUP") => {}
            Err(e) => return Err(redis_error(&e)),
        }
        self.group_ready.store(true, Relaxed);
        Ok(())
    }

    /// A call failed: if the group is gone (Redis lost its data), make it again next time.
    fn failed(&self, e: redis::RedisError) -> Error {
        if e.code() == Some("NOGROUP") {
            self.group_ready
                .store(false, std::sync::atomic::Ordering::Relaxed);
        }
        redis_error(&e)
    }

    fn entries(ids: Vec<redis::streams::StreamId>) -> Vec<HookEntry> {
        ids.into_iter()
            .filter_map(|s| {
                let event: String = s.get("e")?;
                Some(HookEntry { id: s.id, event })
            })
            .collect()
    }
}

fn op_args(op: &HookOp) -> [&str; 5] {
    fn ev(e: &Option<String>) -> &str {
        e.as_deref().unwrap_or("")
    }
    let flag = |emit: bool| if emit { "1" } else { "" };
    match op {
        HookOp::Connect {
            client,
            user,
            event,
        } => ["c", client, user.as_deref().unwrap_or(""), "", ev(event)],
        HookOp::Disconnect { client, event } => ["d", client, "", "", ev(event)],
        HookOp::Subscribe {
            client,
            user,
            channel,
            event,
        } => [
            "s",
            client,
            user.as_deref().unwrap_or(""),
            channel,
            ev(event),
        ],
        HookOp::Unsubscribe {
            client,
            channel,
            event,
        } => ["u", client, "", channel, ev(event)],
        HookOp::Occupy { channel, emit } => ["o", "", "", channel, flag(*emit)],
        HookOp::Vacate { channel, emit } => ["v", "", "", channel, flag(*emit)],
    }
}

impl HookLog for RedisHookLog {
    fn record<'a>(&'a self, ops: &'a [HookOp]) -> EngineFuture<'a, ()> {
        Box::pin(async move {
            static SCRIPT: OnceLock<redis::Script> = OnceLock::new();
            let script = SCRIPT.get_or_init(|| redis::Script::new(RECORD));
            let node = &self.engine.node;
            // Scripts of a bounded size: 200 ops each, in order.
            for chunk in ops.chunks(200) {
                let mut call = script.prepare_invoke();
                call.key(EVENTS)
                    .key(sessions(node))
                    .key(occupied(node))
                    .arg(node)
                    .arg(MAXLEN);
                for op in chunk {
                    for a in op_args(op) {
                        call.arg(a);
                    }
                }
                call.invoke_async::<()>(&mut self.engine.registry())
                    .await
                    .map_err(|e| redis_error(&e))?;
            }
            Ok(())
        })
    }

    fn take<'a>(&'a self, n: usize) -> EngineFuture<'a, Vec<HookEntry>> {
        Box::pin(async move {
            self.ensure_group().await?;
            let reply: Option<StreamReadReply> = redis::cmd("XREADGROUP")
                .arg("GROUP")
                .arg(GROUP)
                .arg(&self.engine.node)
                .arg("COUNT")
                .arg(n)
                .arg("STREAMS")
                .arg(EVENTS)
                .arg(">")
                .query_async(&mut self.engine.registry())
                .await
                .map_err(|e| self.failed(e))?;
            Ok(reply
                .map(|r| {
                    r.keys
                        .into_iter()
                        .flat_map(|k| Self::entries(k.ids))
                        .collect()
                })
                .unwrap_or_default())
        })
    }

    fn take_stale<'a>(&'a self, n: usize, idle: Duration) -> EngineFuture<'a, Vec<HookEntry>> {
        Box::pin(async move {
            self.ensure_group().await?;
            let reply: StreamAutoClaimReply = redis::cmd("XAUTOCLAIM")
                .arg(EVENTS)
                .arg(GROUP)
                .arg(&self.engine.node)
                .arg(idle.as_millis() as u64)
                .arg("0-0")
                .arg("COUNT")
                .arg(n)
                .query_async(&mut self.engine.registry())
                .await
                .map_err(|e| self.failed(e))?;
            Ok(Self::entries(reply.claimed))
        })
    }

    fn take_mine<'a>(&'a self, n: usize, idle: Duration) -> EngineFuture<'a, Vec<HookEntry>> {
        Box::pin(async move {
            self.ensure_group().await?;
            let node = &self.engine.node;
            let pending: redis::streams::StreamPendingCountReply = redis::cmd("XPENDING")
                .arg(EVENTS)
                .arg(GROUP)
                .arg("IDLE")
                .arg(idle.as_millis() as u64)
                .arg("-")
                .arg("+")
                .arg(n)
                .arg(node)
                .query_async(&mut self.engine.registry())
                .await
                .map_err(|e| self.failed(e))?;
            let ids: Vec<String> = pending.ids.into_iter().map(|p| p.id).collect();
            if ids.is_empty() {
                return Ok(Vec::new());
            }
            let claimed: redis::streams::StreamClaimReply = redis::cmd("XCLAIM")
                .arg(EVENTS)
                .arg(GROUP)
                .arg(node)
                .arg(0)
                .arg(&ids)
                .query_async(&mut self.engine.registry())
                .await
                .map_err(|e| self.failed(e))?;
            Ok(Self::entries(claimed.ids))
        })
    }

    fn keep<'a>(&'a self, ids: &'a [String]) -> EngineFuture<'a, ()> {
        Box::pin(async move {
            if ids.is_empty() {
                return Ok(());
            }
            redis::cmd("XCLAIM")
                .arg(EVENTS)
                .arg(GROUP)
                .arg(&self.engine.node)
                .arg(0)
                .arg(ids)
                .arg("JUSTID")
                .query_async::<redis::Value>(&mut self.engine.registry())
                .await
                .map_err(|e| self.failed(e))?;
            Ok(())
        })
    }

    fn done<'a>(&'a self, ids: &'a [String]) -> EngineFuture<'a, ()> {
        Box::pin(async move {
            if ids.is_empty() {
                return Ok(());
            }
            redis::pipe()
                .cmd("XACK")
                .arg(EVENTS)
                .arg(GROUP)
                .arg(ids)
                .ignore()
                .cmd("XDEL")
                .arg(EVENTS)
                .arg(ids)
                .ignore()
                .query_async::<()>(&mut self.engine.registry())
                .await
                .map_err(|e| self.failed(e))?;
            Ok(())
        })
    }

    fn reap<'a>(&'a self, node: &'a str, events: ReapEvents) -> EngineFuture<'a, u64> {
        Box::pin(reap(&self.engine, node, events))
    }
}

/// Emits dead node `node`'s events, in batches of 500, until its registry is empty.
pub(super) async fn reap(
    engine: &RedisEngine,
    node: &str,
    events: ReapEvents,
) -> Result<u64, Error> {
    static SCRIPT: OnceLock<redis::Script> = OnceLock::new();
    let script = SCRIPT.get_or_init(|| redis::Script::new(REAP));
    let flag = |b: bool| if b { "1" } else { "" };
    let mut total = 0;
    loop {
        let n: u64 = script
            .key(EVENTS)
            .key(sessions(node))
            .key(occupied(node))
            .arg(node)
            .arg(MAXLEN)
            .arg(500)
            .arg(&engine.node)
            .arg(flag(events.disconnect))
            .arg(flag(events.unsubscribe))
            .arg(flag(events.vacated))
            .invoke_async(&mut engine.registry())
            .await
            .map_err(|e| redis_error(&e))?;
        if n == 0 {
            return Ok(total);
        }
        total += n;
    }
}
