--- ip_hash with nginx's semantics (ngx_http_upstream_get_ip_hash_peer): the hash runs over the
--- first three octets of an IPv4 client (its /24) or the whole 16 bytes of an IPv6 client,
--- starting from 89, ``hash = (hash * 113 + byte) % 6271``; ``hash % total weight`` walks the
--- members in order with their weights. A peer that is not usable or already tried makes the
--- hash run again over the same bytes (so a dead member's clients spread and the others stay);
--- after 20 rehashes nginx falls back to round robin, and so does this. Pure Lua.
local wrr = require("clb.wrr")

local M = {}

M.INITIAL = 89
M.MAX_TRIES = 20

--- ``hash`` and ``tries`` carry the hash and the rehash count between the tries of one request
--- (nil on the first try); returns the peer, the hash and the count to keep (two numbers, not a
--- table: nothing is allocated per request).
function M.pick(up, addr, tried, hash, tries)
  hash, tries = hash or M.INITIAL, tries or 0
  local peers = up.peers
  if tries > M.MAX_TRIES or #peers < 2 then
    return wrr.pick(peers, tried), hash, tries
  end
  local len = #addr == 4 and 3 or #addr
  local byte = string.byte
  while true do
    for i = 1, len do
      hash = (hash * 113 + byte(addr, i)) % 6271
    end
    local w = hash % up.hash_weight
    local p = 1
    while w >= peers[p].hash_weight do
      w = w - peers[p].hash_weight
      p = p + 1
    end
    local peer = peers[p]
    if peer.usable and not (tried and tried[p]) then
      return peer, hash, tries
    end
    tries = tries + 1
    if tries > M.MAX_TRIES then
      return wrr.pick(peers, tried), hash, tries
    end
  end
end

return M
