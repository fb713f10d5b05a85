--- Micro-benchmark of the Lua balancer's request path under plain LuaJIT (not a test): the
--- balancer and log phases of one request, in a loop, against stand-ins for nginx's shared dicts
--- and ngx.balancer (Lua tables: nginx's own C side is not measured). Prints the time per request
--- and the bytes of Lua memory allocated per request with the garbage collector stopped (0: the
--- request path allocates nothing, so it never makes the collector run). It is a diagnostic, not
--- the user's path and without a reference: bench/dynamic_bench.py measures that path (wrk through
--- nginx, dynamic against a static upstream in the same run); this one shows how much of its gap
--- is this repository's Lua (a fixed-peer loop as a reference is compiled away by LuaJIT).
---
--- Run:  luajit bench/balancer_micro.lua [requests] [wrr|least_conn|ip_hash]   (from the repository root)
package.path = "clbagent/lua/?.lua;tests/lua/?.lua;" .. package.path
local ffi = require("ffi")

local dict = require("shared_dict").new

local request = ffi.cast("void *", 0x10000)
package.loaded["resty.core.base"] = {
  get_request = function()
    return request
  end,
}
package.loaded["ngx.balancer"] = {
  set_current_peer = function()
    return true
  end,
  set_more_tries = function()
    return true
  end,
  get_last_failure = function()
    return nil
  end,
}
_G.ngx = {
  shared = { clb_upstreams = dict(), clb_conns = dict() },
  var = { binary_remote_addr = "\127\0\0\1" },
  header = {},
  ERR = 4,
  ERROR = -1,
  log = function() end,
  exit = function(code)
    error("ngx.exit(" .. code .. ")")
  end,
}

local store = require("clb.store")
local balancer = require("clb.balancer")
local members = {}
for i = 1, 3 do
  members[i] = { endpoint = "10.0.0." .. i .. ":8080", weight = 10, down = false }
end
local name = "u_0123456789abcdef0123456789abcdef_loc_root"
local n, method = tonumber(arg[1]) or 2000000, arg[2] or "wrr"
local word = os.tmpname() -- the change counter in mapped memory, as nginx's master maps it (clb.init)
assert(store.map_word(word), "cannot map the change counter")
assert(store.new(ngx.shared.clb_upstreams):write(name, { method = method, members = members }, "file"))

local function run(count)
  local balance, log = balancer.balance, balancer.log
  for _ = 1, count do
    balance(name)
    log()
  end
end
run(100000) -- warm-up: traces compiled
collectgarbage("collect")
collectgarbage("stop")
local kb, t = collectgarbage("count"), os.clock()
run(n)
local seconds = os.clock() - t
local bytes = (collectgarbage("count") - kb) * 1024
os.remove(word)
print(string.format("%s, %d requests: %.0f ns per request (balancer + log phase), %.1f bytes of Lua memory per request",
  method, n, seconds / n * 1e9, bytes / n))
