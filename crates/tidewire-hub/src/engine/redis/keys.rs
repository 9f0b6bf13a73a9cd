//! Where a channel lives in Redis: its keys, its pub/sub channel, the messages on it, and
//! the Lua scripts that change a channel's keys in one step.
//!
//! Every key of a channel has the channel's name as its hash tag (`tw:{NAME}:...`), so that
//! they are in one hash slot (Redis Cluster) and one script can touch them all. A name
//! holding `}` is fine: the tag ends at its first `}`, the same for every key of the
//! channel.
//!
//! | key | type | what |
//! |---|---|---|
//! | `tw:{C}:m` | hash | `e` epoch, `o` last offset; expires one history TTL after the last use |
//! | `tw:{C}:s` | stream | history: entry id `OFFSET-0`, fields `d` data and `t` time (ms) |
//! | `tw:{C}:k:KEY` | string | `OFFSET:EPOCH` of the publication made with idempotency key KEY |
//! | `tw:{C}:p` | hash | presence: client id → `ClientInfo` JSON |
//! | `tw:{C}:pz` | sorted set | presence: client id → expiry (ms since the Unix epoch) |
//! | `tw:{C}:live` | pub/sub | publications, joins and leaves ([`Message`]); sharded pub/sub on a cluster |
//! | `tw:{nodes}:N` | string | node N's status (JSON), expiring unless announced again |
//! | `tw:{nodes}:N:p` | set | `C\0CLIENT` of node N's presence entries, for reaping them |
//! | `tw:{nodes}` | sorted set | names of the nodes that announced themselves → last time |
//! | `tw:{nodes}:N:reaped` | string | set when another node reaped N's presence (N rejoins) |
//! | `tw:{nodes}:N:reaping` | string | the node reaping N's presence now |
//! | `tw:probe:N` | pub/sub | node N's liveness probe of its own subscriber connection |
//! | `tw:probe:{K}:N` | sharded pub/sub | on a cluster: node N's probe of one master (K: a tag in its slots) |
//!
//! The registry's keys share the tag `{nodes}`, so that its scripts touch one slot.

use bytes::Bytes;

/// The key prefix of channel `name`: `tw:{NAME}`.
fn tagged(name: &str, suffix: &str) -> String {
    let mut k = String::with_capacity(name.len() + suffix.len() + 6);
    k.push_str("tw:{");
    k.push_str(name);
    k.push('}');
    k.push_str(suffix);
    k
}

pub(super) fn meta(name: &str) -> String {
    tagged(name, ":m")
}

pub(super) fn stream(name: &str) -> String {
    tagged(name, ":s")
}

pub(super) fn idempotency(name: &str, key: &str) -> String {
    tagged(name, &format!(":k:{key}"))
}

pub(super) fn presence(name: &str) -> String {
    tagged(name, ":p")
}

pub(super) fn presence_expiry(name: &str) -> String {
    tagged(name, ":pz")
}

pub(super) fn live(name: &str) -> String {
    tagged(name, ":live")
}

/// The channel a pub/sub channel name ([`live`]) is for.
pub(super) fn channel_of_live(live: &str) -> Option<&str> {
    live.strip_prefix("tw:{")?.strip_suffix("}:live")
}

pub(super) fn node(name: &str) -> String {
    format!("tw:{{nodes}}:{name}")
}

/// Set by the node that reaped node `name`'s presence: a random id per reap.
pub(super) fn node_reaped(name: &str) -> String {
    format!("tw:{{nodes}}:{name}:reaped")
}

pub(super) fn node_presence(name: &str) -> String {
    format!("tw:{{nodes}}:{name}:p")
}

pub(super) const NODES: &str = "tw:{nodes}";

pub(super) fn probe(name: &str) -> String {
    format!("tw:probe:{name}")
}

/// A message on a channel's pub/sub channel.
#[derive(Debug, PartialEq)]
pub(super) enum Message {
    /// `p<offset> <epoch> <data>`
    Publication {
        offset: u64,
        epoch: String,
        data: Bytes,
    },
    /// `j<ClientInfo JSON>`
    Join(Bytes),
    /// `l<ClientInfo JSON>`
    Leave(Bytes),
}

impl Message {
    /// Reads a message; `None` for one this version does not know.
    pub(super) fn parse(payload: &[u8]) -> Option<Message> {
        let (&kind, rest) = payload.split_first()?;
        match kind {
            b'p' => {
                let sp = rest.iter().position(|&b| b == b' ')?;
                let offset = std::str::from_utf8(&rest[..sp]).ok()?.parse().ok()?;
                let rest = &rest[sp + 1..];
                let sp = rest.iter().position(|&b| b == b' ')?;
                let epoch = std::str::from_utf8(&rest[..sp]).ok()?.to_owned();
                let data = Bytes::copy_from_slice(&rest[sp + 1..]);
                Some(Message::Publication {
                    offset,
                    epoch,
                    data,
                })
            }
            b'j' => Some(Message::Join(Bytes::copy_from_slice(rest))),
            b'l' => Some(Message::Leave(Bytes::copy_from_slice(rest))),
            _ => None,
        }
    }
}

/// Publishes with history. KEYS: meta, stream, idempotency key (optional). ARGV: live
/// channel, data, history size, history TTL (ms), a new epoch (used when the channel has
/// none), the publish command (`PUBLISH`, or `SPUBLISH` on a cluster). Returns `{offset, epoch}`; for a key already used, the first publication's.
pub(super) const PUBLISH: &str = r#"
local meta, stream, idem = KEYS[1], KEYS[2], KEYS[3]
if idem then
  local prev = redis.call('GET', idem)
  if prev then
    local sep = string.find(prev, ':', 1, true)
    return {tonumber(string.sub(prev, 1, sep - 1)), string.sub(prev, sep + 1)}
  end
end
local ttl = tonumber(ARGV[4])
local size = tonumber(ARGV[3])
local epoch = redis.call('HGET', meta, 'e')
if not epoch then
  epoch = ARGV[5]
  redis.call('DEL', stream)
  redis.call('HSET', meta, 'e', epoch, 'o', 0)
end
local offset = redis.call('HINCRBY', meta, 'o', 1)
if size > 0 then
  local t = redis.call('TIME')
  local ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  redis.call('XADD', stream, 'MAXLEN', size, offset .. '-0', 'd', ARGV[2], 't', ms)
  redis.call('PEXPIRE', stream, ttl)
end
redis.call('PEXPIRE', meta, ttl)
redis.call(ARGV[6], ARGV[1], 'p' .. offset .. ' ' .. epoch .. ' ' .. ARGV[2])
if idem then
  redis.call('SET', idem, offset .. ':' .. epoch, 'PX', ttl)
end
return {offset, epoch}
"#;

/// Reads history and the position in one step (never a partial read). KEYS: meta, stream.
/// ARGV: mode (`pos`, `newest`, `since`), n or the offset since, the epoch since, `1` to
/// create the channel when it has no epoch, a new epoch, history TTL (ms), history size.
/// Returns `{offset, epoch, complete (0/1), {offset, data, ...}}`.
pub(super) const HISTORY: &str = r#"
local meta, stream = KEYS[1], KEYS[2]
local mode = ARGV[1]
local ttl = tonumber(ARGV[6])
local size = tonumber(ARGV[7])
local epoch = redis.call('HGET', meta, 'e')
local offset = 0
if not epoch then
  if ARGV[4] ~= '1' then
    return {0, '', 1, {}}
  end
  epoch = ARGV[5]
  redis.call('DEL', stream)
  redis.call('HSET', meta, 'e', epoch, 'o', 0)
else
  offset = tonumber(redis.call('HGET', meta, 'o'))
end
if mode ~= 'newest' then
  -- A subscribe: the channel keeps its position for a history TTL from now.
  redis.call('PEXPIRE', meta, ttl)
end
local t = redis.call('TIME')
local oldest = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) - ttl
local out = {}
local function keep(entries)
  for _, e in ipairs(entries) do
    local f = e[2]
    local d, at = nil, 0
    for i = 1, #f, 2 do
      if f[i] == 'd' then d = f[i + 1] elseif f[i] == 't' then at = tonumber(f[i + 1]) end
    end
    if at < oldest then return false end
    out[#out + 1] = tonumber(string.match(e[1], '^(%d+)'))
    out[#out + 1] = d
  end
  return true
end
if mode == 'pos' then
  return {offset, epoch, 1, out}
elseif mode == 'newest' then
  local n = math.min(tonumber(ARGV[2]), size)
  if n <= 0 or offset == 0 then return {offset, epoch, 1, out} end
  local entries = redis.call('XREVRANGE', stream, '+', '-', 'COUNT', n)
  local fresh = {}
  for i = #entries, 1, -1 do fresh[#fresh + 1] = entries[i] end
  -- Skip the ones older than the TTL (oldest first, so drop from the front).
  local first = 1
  for i, e in ipairs(fresh) do
    local f = e[2]
    local at = 0
    for j = 1, #f, 2 do if f[j] == 't' then at = tonumber(f[j + 1]) end end
    if at >= oldest then first = i break end
    first = i + 1
  end
  local kept = {}
  for i = first, #fresh do kept[#kept + 1] = fresh[i] end
  keep(kept)
  return {offset, epoch, 1, out}
else
  local since = tonumber(ARGV[2])
  if ARGV[3] ~= epoch or since > offset then return {offset, epoch, 0, out} end
  if since == offset then return {offset, epoch, 1, out} end
  local want = offset - since
  if want > size then return {offset, epoch, 0, out} end
  local entries = redis.call('XRANGE', stream, (since + 1) .. '-0', '+', 'COUNT', want)
  if #entries ~= want then return {offset, epoch, 0, {}} end
  if tonumber(string.match(entries[1][1], '^(%d+)')) ~= since + 1 then
    return {offset, epoch, 0, {}}
  end
  if not keep(entries) then return {offset, epoch, 0, {}} end
  return {offset, epoch, 1, out}
end
"#;

/// Drops a channel that went back in time: if it is still in epoch ARGV[1] with an offset
/// below ARGV[2] (publications up to ARGV[2] were delivered, then lost by Redis), its keys
/// are deleted so that the next use starts a new epoch. KEYS: meta, stream. Returns 1 if
/// it was dropped.
pub(super) const FENCE: &str = r#"
local epoch = redis.call('HGET', KEYS[1], 'e')
local offset = tonumber(redis.call('HGET', KEYS[1], 'o') or '0')
if epoch == ARGV[1] and offset < tonumber(ARGV[2]) then
  redis.call('DEL', KEYS[1], KEYS[2])
  return 1
end
return 0
"#;

/// Announces a node, timed by Redis's clock (nodes' clocks may differ). KEYS: the node's
/// key, the registry, the node's reaped marker. ARGV: the node's name, its status JSON, the
/// TTL (ms). Returns the reaped marker (set by the node that reaped this one's presence), or
/// nil.
pub(super) const ANNOUNCE: &str = r#"
local t = redis.call('TIME')
local ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
redis.call('ZADD', KEYS[2], ms, ARGV[1])
return redis.call('GET', KEYS[3])
"#;

/// The nodes that have not announced themselves for ARGV[1] ms, by Redis's clock. KEYS:
/// the registry.
pub(super) const SILENT_NODES: &str = r#"
local t = redis.call('TIME')
local ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
return redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ms - tonumber(ARGV[1]))
"#;

/// Adds or refreshes a presence entry, its expiry by Redis's clock. KEYS: presence hash,
/// expiry zset. ARGV: client id, ClientInfo JSON, (unused), TTL (ms).
pub(super) const PRESENCE_ADD: &str = r#"
local t = redis.call('TIME')
local ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[2], ms + tonumber(ARGV[4]), ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
redis.call('PEXPIRE', KEYS[2], ARGV[4])
return 1
"#;

/// Removes a presence entry; with a live channel given, publishes its leave (only if the
/// entry was there: exactly one leave however many nodes try). KEYS: presence hash,
/// expiry zset. ARGV: client id, live channel or '', the publish command. Returns 1 if it
/// was there.
pub(super) const PRESENCE_REMOVE: &str = r#"
local info = redis.call('HGET', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
if not info then return 0 end
if ARGV[2] ~= '' then
  redis.call(ARGV[3], ARGV[2], 'l' .. info)
end
return 1
"#;

/// Lists presence, dropping entries past their expiry (by Redis's clock) from the answer.
/// KEYS: presence hash, expiry zset. Returns the ClientInfo JSONs.
pub(super) const PRESENCE_LIST: &str = r#"
local t = redis.call('TIME')
local ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local live = redis.call('ZRANGEBYSCORE', KEYS[2], ms, '+inf')
if #live == 0 then return {} end
return redis.call('HMGET', KEYS[1], unpack(live))
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_share_the_channel_tag() {
        assert_eq!(meta("chat:a"), "tw:{chat:a}:m");
        assert_eq!(live("a}b"), "tw:{a}b}:live");
        assert_eq!(channel_of_live(&live("a}b")), Some("a}b"));
        assert_eq!(channel_of_live("other"), None);
    }

    #[test]
    fn messages_parse() {
        assert_eq!(
            Message::parse(b"p12 ab12 {\"x\": 1}"),
            Some(Message::Publication {
                offset: 12,
                epoch: "ab12".into(),
                data: Bytes::from_static(b"{\"x\": 1}"),
            })
        );
        assert_eq!(
            Message::parse(b"j{}"),
            Some(Message::Join(Bytes::from_static(b"{}")))
        );
        assert_eq!(Message::parse(b"p12"), None);
        assert_eq!(Message::parse(b"px ab {}"), None);
        assert_eq!(Message::parse(b""), None);
        assert_eq!(Message::parse(b"?"), None);
    }
}
