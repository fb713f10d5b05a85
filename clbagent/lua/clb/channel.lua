--- The control channel (content_by_lua of the server on the root-only unix socket):
---   PUT|POST /upstreams          {"upstreams": {<name>: <upstream>, ...}} replaces those upstreams
---                                 (all or none); answers {"versions": {<name>: <version>}}
---   DELETE /upstreams/<name>     removes one upstream (404 when nginx holds none by that name)
---   GET /upstreams[/<name>]      what nginx holds: version, method, sticky and members with their
---                                 active connections, and the instance id of the shared dict
--- Malformed input is answered 400 with {"error": <message>, "path": <field>}; nothing a client
--- sends can raise an error inside the worker.
local cjson = require("cjson.safe")
local peers = require("clb.peers")
local spec = require("clb.spec")
local store = require("clb.store")

local ngx = ngx
local M = {}

local function reply(status, body)
  ngx.status = status
  ngx.header["Content-Type"] = "application/json"
  ngx.say(cjson.encode(body))
  return ngx.exit(ngx.HTTP_OK)
end

local function refuse(status, message, path)
  return reply(status, { error = message, path = path })
end

local function view(shm, name)
  local upstream, version = shm:read(name)
  if not upstream then
    return nil
  end
  local conns = ngx.shared.clb_conns
  for _, m in ipairs(upstream.members) do
    m.active = conns:get(peers.conns_key(name, m.endpoint)) or 0
  end
  upstream.version = version
  return upstream
end

local function held(shm, name)
  if name then
    local one = view(shm, name)
    if not one then
      return refuse(404, "nginx holds no upstream by this name", "")
    end
    return reply(200, one)
  end
  local all = {}
  for _, n in ipairs(shm:names()) do
    all[n] = view(shm, n)
  end
  return reply(200, { instance = shm:instance(), upstreams = all })
end

local function body()
  ngx.req.read_body()
  local data = ngx.req.get_body_data()
  if not data then
    if ngx.req.get_body_file() then
      return nil, 413, "the body is larger than client_body_buffer_size"
    end
    return nil, 400, "the body is empty"
  end
  local doc, err = cjson.decode(data)
  if doc == nil then
    return nil, 400, "the body is not JSON: " .. tostring(err)
  end
  return doc
end

local function put(shm)
  local doc, status, message = body()
  if status then -- (a body of false or null is a document, and a malformed one)
    return refuse(status, message, "")
  end
  local upstreams, err = spec.document(doc)
  if not upstreams then
    return refuse(400, err.message, err.path)
  end
  local versions = {}
  for name, upstream in pairs(upstreams) do
    local version, werr = shm:write(name, upstream, "channel")
    if not version then
      return refuse(507, "shared dict clb_upstreams is full: " .. tostring(werr), "upstreams." .. name)
    end
    versions[name] = version
  end
  return reply(200, { versions = versions })
end

function M.handle()
  local shm = store.new(ngx.shared.clb_upstreams)
  local uri, method = ngx.var.uri, ngx.req.get_method()
  local name = uri:match("^/upstreams/(.+)$")
  if name and not spec.name(name) then
    return refuse(400, "an upstream name is 1-128 letters, digits, '_', '.' or '-'", "name")
  end
  if uri ~= "/upstreams" and not name then
    return refuse(404, "no such resource: use /upstreams or /upstreams/<name>", "")
  end
  if method == "GET" then
    return held(shm, name)
  elseif (method == "PUT" or method == "POST") and not name then
    return put(shm)
  elseif method == "DELETE" and name then
    if shm:remove(name) then
      return reply(200, { deleted = name })
    end
    return refuse(404, "nginx holds no upstream by this name", "")
  end
  return refuse(405, "method " .. method .. " is not allowed on " .. uri, "")
end

return M
