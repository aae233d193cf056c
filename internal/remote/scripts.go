package remote

import "github.com/redis/go-redis/v9"

// Writes run as scripts so that the change to the key and its invalidation message
// are one atomic step on the owner node: no reader can see the new state without
// the message having been published, and the node's sequence numbers follow the
// order of its writes exactly.
//
// Keys: KEYS[1] the node's sequence counter, KEYS[2] the node's epoch, then each
// value key followed by its lease key: a write voids any lease on the key (see
// lease.go), so that a load that began before it cannot fill after it. The epoch is a random id the first writer stores (ARGV[2]); a node that
// restarts without its data loses both, so its next message carries a new epoch and
// a sequence starting again at 1, which every subscriber treats as "flush".
//
// Message: "<epoch>|<seq>|<payload>" (see package invalidation).

// setScript writes (sets or deletes) one or more keys with one message: KEYS[3..] =
// each value key followed by its lease key; ARGV = channel, epoch candidate, payload
// (every key's), then each value followed by its TTL in ms, or by -1 to delete the
// key. Key pair i (KEYS[i], KEYS[i+1]) has its value and TTL at ARGV[i+1], ARGV[i+2].
var setScript = redis.NewScript(epochLua + `
for i = 3, #KEYS, 2 do
  if ARGV[i+2] == '-1' then
    redis.call('DEL', KEYS[i])
  else
    redis.call('SET', KEYS[i], ARGV[i+1], 'PX', ARGV[i+2])
  end
  redis.call('DEL', KEYS[i+1])
end
` + publishLua)

// deleteTTL marks a write that deletes its key (setScript).
const deleteTTL = -1

// epochLua reads the node's epoch, storing the candidate (ARGV[2]) if there is none.
const epochLua = `
local epoch = redis.call('GET', KEYS[2])
if not epoch then
  epoch = ARGV[2]
  redis.call('SET', KEYS[2], epoch)
end
`

// publishLua numbers the message and publishes it (ARGV[1] channel, ARGV[3] payload).
const publishLua = `
local seq = redis.call('INCR', KEYS[1])
redis.call('PUBLISH', ARGV[1], epoch .. '|' .. seq .. '|' .. ARGV[3])
return seq
`

// delScript: ARGV = channel, epoch candidate, payload.
var delScript = redis.NewScript(epochLua + `
for i = 3, #KEYS do
  redis.call('DEL', KEYS[i])
end
` + publishLua)

// On a Redis Cluster the keys of one script must share a slot, and there is no
// node-wide counter a script on any slot could increment, so writes publish without
// a sequence ("-|0|<payload>"): subscribers still evict, but cannot detect a lost
// message by its number; a lost subscription is still detected and flushed.

// clusterSetScript: KEYS = the value key, its lease key; ARGV = channel, payload,
// value, ttl in ms.
var clusterSetScript = redis.NewScript(`
redis.call('SET', KEYS[1], ARGV[3], 'PX', ARGV[4])
redis.call('DEL', KEYS[2])
redis.call('PUBLISH', ARGV[1], '-|0|' .. ARGV[2])
return 0
`)

// clusterDelScript: KEYS = the value key, its lease key; ARGV = channel, payload.
var clusterDelScript = redis.NewScript(`
redis.call('DEL', KEYS[1], KEYS[2])
redis.call('PUBLISH', ARGV[1], '-|0|' .. ARGV[2])
return 0
`)
