--- The request side: picks the member of an upstream for each try of a request
--- (balancer_by_lua), sets the persistence cookie of the member that answered
--- (header_filter_by_lua) and counts active connections per member across workers
--- (clb_conns shared dict; +1 when a try starts, -1 when it ends).
---
--- Each worker caches the per-worker form of every upstream it served (clb.peers) with the
--- version it was built from; one read of the gen word (clb.store) per request tells whether any
--- version moved.
--- The request path allocates nothing: the state tables of finished requests are kept for later
--- ones, and the version key of each upstream is built once.
---
--- The state of a request's tries is kept by the request itself (its ngx_http_request_t), not in
--- ngx.ctx: an internal redirect (error_page after the last try failed) empties ngx.ctx, and the
--- log phase would then never give the connection back. A request object is reused by later
--- requests, so the first try (no last failure) always starts afresh.
local ngx_balancer = require("ngx.balancer")
local base = require("resty.core.base")
local ffi = require("ffi")
local peers = require("clb.peers")
local store = require("clb.store")
local wrr = require("clb.wrr")
local leastconn = require("clb.leastconn")
local iphash = require("clb.iphash")

local ngx = ngx
local set_current_peer, set_more_tries = ngx_balancer.set_current_peer, ngx_balancer.set_more_tries
local get_last_failure = ngx_balancer.get_last_failure

local M = {}

--- The address of the current request object (a number: the cdata box differs on every call).
local uintptr_t = ffi.typeof("uintptr_t")
local get_request = base.get_request
local function request_key()
  return tonumber(ffi.cast(uintptr_t, get_request()))
end

local NO_LIVE_UPSTREAMS = -3 -- NGX_BUSY: nginx answers 502 and logs "no live upstreams"
local cache = {}
local any_sticky = false -- until an upstream with cookie persistence is seen, no header filter work
local inflight = {} -- request address → state of its tries (new_state)
local spare, nspare = {}, 0 -- state tables of finished requests, for the next ones
local MAX_SPARE = 1024
local shm = store.new(ngx.shared.clb_upstreams)
local upstreams = ngx.shared.clb_upstreams
local conns = ngx.shared.clb_conns
local GEN = store.GEN
local version_key = setmetatable({}, { -- "v:<name>" per upstream name of the configuration (bounded)
  __index = function(keys, name)
    local key = store.version_key(name)
    keys[name] = key
    return key
  end,
})

--- The per-worker form of upstream ``name`` at its current version, or nil when nginx holds none.
--- The common case costs one memory read (the gen word, see clb.store; the dict's "gen" where it
--- could not be mapped): when the change counter is the one this upstream was last checked at,
--- nothing changed since; otherwise its version is read (and the upstream decoded again only when
--- that moved). The counter moves after a version does, and is read before it: a change is seen by
--- the very next request.
function M.upstream(name)
  local word = store.word
  local gen
  if word then
    gen = word[0]
  else
    gen = upstreams:get(GEN)
  end
  local up = cache[name]
  if up and gen and up.gen == gen then
    return up
  end
  local version = upstreams:get(version_key[name])
  if up and up.version == version then
    up.gen = gen
    return up
  end
  if not version then
    cache[name] = nil
    return nil
  end
  local upstream
  upstream, version = shm:read(name)
  if not upstream then
    return nil
  end
  up = peers.build(name, upstream, version)
  up.gen = gen
  cache[name] = up
  any_sticky = any_sticky or up.sticky ~= nil
  return up
end

local function active(peer)
  return conns:get(peer.ckey) or 0
end

local function pick(up, st)
  local tried = st.tried
  if not tried and up.cookie_var then
    local sid = ngx.var[up.cookie_var]
    local pinned = sid and up.by_sid[sid]
    if pinned and pinned.usable then
      return pinned
    end
  end
  local method = up.method
  if method == "least_conn" then
    return leastconn.pick(up.peers, tried, active)
  elseif method == "ip_hash" then
    local peer
    peer, st.hash, st.tries = iphash.pick(up, ngx.var.binary_remote_addr, tried, st.hash, st.tries)
    return peer
  end
  return wrr.pick(up.peers, tried)
end

--- The state of one request's tries. Every field is always present (false when unset): a store
--- into a table that lacks the key is several times slower in LuaJIT's compiled code.
local function new_state()
  return { up = false, peer = false, tried = false, hash = false, tries = false }
end

local function release(peer)
  local n = conns:incr(peer.ckey, -1)
  if n and n < 0 then
    conns:set(peer.ckey, 0)
  end
end

--- balancer_by_lua: first try of a request, or the next one after a connection error.
function M.balance(name)
  local r = request_key()
  local st = inflight[r]
  if st and get_last_failure() then -- a retry (proxy_next_upstream): never the same member twice
    if st.peer then
      release(st.peer)
      st.tried = st.tried or {}
      st.tried[st.peer.index] = true
      st.peer = false
    end
  else
    if st then -- left by an earlier request whose log phase never ran
      if st.peer then
        release(st.peer)
      end
    elseif nspare > 0 then
      st = spare[nspare]
      spare[nspare] = nil
      nspare = nspare - 1
    else
      st = new_state()
    end
    local up = M.upstream(name)
    st.up, st.peer, st.tried, st.hash, st.tries = up, false, false, false, false
    inflight[r] = st
    if not up or up.usable == 0 then
      return ngx.exit(NO_LIVE_UPSTREAMS)
    end
    if up.usable > 1 then
      set_more_tries(up.usable - 1)
    end
  end
  local peer = st.up and pick(st.up, st)
  if not peer then
    return ngx.exit(NO_LIVE_UPSTREAMS)
  end
  local ok, err = set_current_peer(peer.host, peer.port)
  if not ok then
    ngx.log(ngx.ERR, "upstream ", name, ": cannot use ", peer.endpoint, ": ", err)
    return ngx.exit(ngx.ERROR)
  end
  st.peer = peer
  conns:incr(peer.ckey, 1, 0)
end

--- header_filter_by_lua: with cookie persistence, the cookie names the member that answered
--- (after a failover, the new one); a missing, stale or forged cookie is replaced.
function M.header_filter()
  if not any_sticky then
    return
  end
  local st = inflight[request_key()]
  local peer = st and st.peer
  if not (peer and peer.cookie) then
    return
  end
  local existing = ngx.header["Set-Cookie"]
  if existing == nil then
    ngx.header["Set-Cookie"] = peer.cookie
  elseif type(existing) == "table" then
    existing[#existing + 1] = peer.cookie
    ngx.header["Set-Cookie"] = existing
  else
    ngx.header["Set-Cookie"] = { existing, peer.cookie }
  end
end

--- log_by_lua: the request is over, its last try no longer holds a connection.
function M.log()
  local r = request_key()
  local st = inflight[r]
  if st then
    inflight[r] = nil
    if st.peer then
      release(st.peer)
    end
    if nspare < MAX_SPARE then
      st.up, st.peer, st.tried, st.hash, st.tries = false, false, false, false, false
      nspare = nspare + 1
      spare[nspare] = st
    end
  end
end

return M
