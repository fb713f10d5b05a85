--- The per-worker form of one upstream: what the balancer walks on every request, built once
--- per version from the normalized upstream (see clb.spec). Pure Lua.
---
--- Every member becomes a peer; ``usable`` says whether it may get traffic: weight 0 never does,
--- a member marked down does not, unless every member with a weight is down — then all of them
--- do (all-dead-all-alive: a health checker that sees everything dead is more likely wrong than
--- every backend).
local bit = require("bit")
local ffi = require("ffi")
local spec = require("clb.spec")

local M = {}

local FNV_OFFSET, FNV_PRIME = 0xcbf29ce484222325ULL, 0x100000001b3ULL
local u64 = ffi.typeof("uint64_t[1]")

--- The conns counter key of one member of one upstream (clb_conns shared dict): the 8 bytes of
--- the 64-bit FNV-1a hash of "<name> <endpoint>". Every try updates it twice, and the dict hashes
--- the whole key each time: a short key is a third of the cost of the plain one (and a collision
--- needs billions of members).
function M.conns_key(name, endpoint)
  local text = name .. " " .. endpoint
  local h = FNV_OFFSET
  for i = 1, #text do
    h = bit.bxor(h, text:byte(i)) * FNV_PRIME
  end
  return ffi.string(u64(h), 8)
end

local function cookie_of(sticky, sid)
  return sticky.cookie .. "=" .. sid .. "; Path=/; Max-Age=" .. sticky.max_age .. "; HttpOnly"
end

function M.build(name, upstream, version)
  local peers, by_sid = {}, {}
  local alive, weighted = 0, 0
  for i, m in ipairs(upstream.members) do
    local host, port = spec.endpoint(m.endpoint)
    if host:find(":", 1, true) then
      host = "[" .. host .. "]" -- ngx.balancer parses the host as a URL: IPv6 needs its brackets
    end
    local p = {
      index = i,
      endpoint = m.endpoint,
      host = host,
      port = port,
      weight = m.weight,
      down = m.down,
      sid = m.sid,
      cw = 0, -- current weight of smooth weighted round robin
      ckey = M.conns_key(name, m.endpoint),
    }
    if m.weight > 0 then
      weighted = weighted + 1
      if not m.down then
        alive = alive + 1
      end
    end
    if upstream.sticky and m.sid then
      p.cookie = cookie_of(upstream.sticky, m.sid)
      by_sid[m.sid] = p
    end
    peers[i] = p
  end
  local panic = alive == 0
  local usable, hash_weight = 0, 0
  for _, p in ipairs(peers) do
    p.usable = p.weight > 0 and (panic or not p.down)
    if p.usable then
      usable = usable + 1
    end
    -- ip_hash walks every member with nginx's weights (a down or weight-0 member keeps its
    -- slot, so the clients of the others do not move when it goes away)
    p.hash_weight = p.weight > 0 and p.weight or 1
    hash_weight = hash_weight + p.hash_weight
  end
  return {
    name = name,
    version = version,
    method = upstream.method,
    sticky = upstream.sticky,
    cookie_var = upstream.sticky and ("cookie_" .. upstream.sticky.cookie),
    peers = peers,
    by_sid = by_sid,
    usable = usable,
    hash_weight = hash_weight,
  }
end

return M
