--- init_by_lua (nginx start and every reload, in the master): load the data file of the prefix
--- into shared memory. A malformed file fails the start or the reload with its path and field
--- (``nginx -t`` does not run init_by_lua: the renderer writes the file from validated models).
local cjson = require("cjson.safe")
local spec = require("clb.spec")
local store = require("clb.store")
-- loaded here, in the master, so that workers inherit them and never read the Lua directory
require("clb.balancer")
require("clb.channel")

local M = {}

function M.load(path)
  local f, err = io.open(path, "rb")
  if not f then
    error("clb: cannot read " .. path .. ": " .. tostring(err), 0)
  end
  local text = f:read("*a")
  f:close()
  local doc, jerr = cjson.decode(text)
  if doc == nil then
    error("clb: " .. path .. " is not JSON: " .. tostring(jerr), 0)
  end
  local upstreams, verr = spec.document(doc)
  if not upstreams then
    error("clb: " .. path .. ": " .. verr.path .. " " .. verr.message, 0)
  end
  local instance = string.format("%d-%d", math.floor(ngx.now() * 1000), ngx.worker.pid())
  local ok, serr = store.new(ngx.shared.clb_upstreams):seed(upstreams, instance)
  if not ok then
    error("clb: " .. path .. ": " .. serr, 0)
  end
end

return M
