--- Validation of upstreams as the agent sends them (control channel) or the renderer writes
--- them (upstreams.json). Pure Lua: no ngx API, so it is unit-tested with plain LuaJIT.
---
--- A document is {"upstreams": {<name>: <upstream>, ...}}; an upstream is
--- {"method": "wrr"|"least_conn"|"ip_hash", "sticky": {"cookie": <name>, "max_age": <s>} (optional),
---  "members": [{"endpoint": "ip:port" | "[ipv6]:port", "weight": 0-100, "down": bool, "sid": <id>}]}.
--- Anything else is refused with the path of the offending field: nginx must never hold a
--- member it cannot connect to or a field nobody reads.
local M = {}

M.MAX_MEMBERS = 1024
M.MAX_UPSTREAMS = 100000
local METHODS = { wrr = true, least_conn = true, ip_hash = true }
local UPSTREAM_FIELDS = { method = true, sticky = true, members = true }
local MEMBER_FIELDS = { endpoint = true, weight = true, down = true, sid = true }
local STICKY_FIELDS = { cookie = true, max_age = true }

local function is_integer(v, lo, hi)
  return type(v) == "number" and v % 1 == 0 and v >= lo and v <= hi
end

--- A JSON array (cjson decodes [] and {} alike into an empty table: both are accepted).
local function is_array(t)
  if type(t) ~= "table" then
    return false
  end
  local n = #t
  for k in pairs(t) do
    if type(k) ~= "number" or k < 1 or k > n or k % 1 ~= 0 then
      return false
    end
  end
  return true
end

local function is_object(t)
  if type(t) ~= "table" then
    return false
  end
  for k in pairs(t) do
    if type(k) ~= "string" then
      return false
    end
  end
  return true
end

local function unknown_field(t, allowed)
  for k in pairs(t) do
    if not allowed[k] then
      return k
    end
  end
end

function M.ipv4(s)
  local a, b, c, d = s:match("^(%d+)%.(%d+)%.(%d+)%.(%d+)$")
  if not a then
    return false
  end
  for _, o in ipairs({ a, b, c, d }) do
    if #o > 3 or tonumber(o) > 255 or (#o > 1 and o:sub(1, 1) == "0") then
      return false
    end
  end
  return true
end

--- Number of 16-bit groups in a colon-separated run of IPv6 fields, nil when malformed;
--- ``v4_tail`` allows a dotted IPv4 address as the last field.
local function ipv6_groups(part, v4_tail)
  if part == "" then
    return 0
  end
  local fields = {}
  for f in (part .. ":"):gmatch("([^:]*):") do
    fields[#fields + 1] = f
  end
  local n = 0
  for i, f in ipairs(fields) do
    if v4_tail and i == #fields and f:find(".", 1, true) then
      if not M.ipv4(f) then
        return nil
      end
      n = n + 2
    elseif f:match("^%x%x?%x?%x?$") then
      n = n + 1
    else
      return nil
    end
  end
  return n
end

function M.ipv6(s)
  if #s < 2 or #s > 45 or not s:match("^[%x:%.]+$") then
    return false
  end
  local gap = s:find("::", 1, true)
  if not gap then
    return ipv6_groups(s, true) == 8
  end
  if s:find("::", gap + 1, true) then
    return false
  end
  local left, right = ipv6_groups(s:sub(1, gap - 1), false), ipv6_groups(s:sub(gap + 2), true)
  return left ~= nil and right ~= nil and left + right <= 7
end

--- host, port of an endpoint ("10.0.0.1:80", "[2001:db8::1]:80"), or nil.
function M.endpoint(s)
  if type(s) ~= "string" or #s > 64 then
    return nil
  end
  local host, port = s:match("^%[([^%]]+)%]:(%d+)$")
  if host then
    if not M.ipv6(host) then
      return nil
    end
  else
    host, port = s:match("^([%d%.]+):(%d+)$")
    if not host or not M.ipv4(host) then
      return nil
    end
  end
  port = tonumber(port)
  if #s - #tostring(port) ~= s:find(":%d+$") or port < 1 or port > 65535 then
    return nil -- leading zeros in the port
  end
  return host, port
end

function M.name(s)
  return type(s) == "string" and #s >= 1 and #s <= 128 and s:match("^[%w_.%-]+$") ~= nil
end

local function check_sticky(s, path)
  if not is_object(s) then
    return nil, { path = path, message = "must be an object with cookie and max_age" }
  end
  local extra = unknown_field(s, STICKY_FIELDS)
  if extra then
    return nil, { path = path .. "." .. extra, message = "is not a known field" }
  end
  if type(s.cookie) ~= "string" or not s.cookie:match("^[%w_]+$") or #s.cookie > 64 then
    return nil, { path = path .. ".cookie", message = "must be 1-64 letters, digits or underscores" }
  end
  if not is_integer(s.max_age, 1, 31536000) then
    return nil, { path = path .. ".max_age", message = "must be an integer number of seconds, 1-31536000" }
  end
  return { cookie = s.cookie, max_age = s.max_age }
end

local function check_member(m, path, sticky)
  if not is_object(m) then
    return nil, { path = path, message = "must be an object" }
  end
  local extra = unknown_field(m, MEMBER_FIELDS)
  if extra then
    return nil, { path = path .. "." .. extra, message = "is not a known field" }
  end
  if not M.endpoint(m.endpoint) then
    return nil, { path = path .. ".endpoint", message = "must be IPv4:port or [IPv6]:port, port 1-65535" }
  end
  if not is_integer(m.weight, 0, 100) then
    return nil, { path = path .. ".weight", message = "must be an integer 0-100" }
  end
  if m.down ~= nil and type(m.down) ~= "boolean" then
    return nil, { path = path .. ".down", message = "must be true or false" }
  end
  if m.sid ~= nil and (type(m.sid) ~= "string" or #m.sid > 64 or not m.sid:match("^[%w_%-]+$")) then
    return nil, { path = path .. ".sid", message = "must be 1-64 letters, digits, '_' or '-'" }
  end
  if sticky and m.sid == nil then
    return nil, { path = path .. ".sid", message = "is required when the upstream has sticky" }
  end
  return { endpoint = m.endpoint, weight = m.weight, down = m.down == true, sid = m.sid }
end

--- The normalized upstream, or nil and {path=, message=}.
function M.upstream(u, path)
  if not is_object(u) then
    return nil, { path = path, message = "must be an object" }
  end
  local extra = unknown_field(u, UPSTREAM_FIELDS)
  if extra then
    return nil, { path = path .. "." .. extra, message = "is not a known field" }
  end
  local method = u.method == nil and "wrr" or u.method
  if not METHODS[method] then
    return nil, { path = path .. ".method", message = "must be wrr, least_conn or ip_hash" }
  end
  local sticky, err
  if u.sticky ~= nil then
    sticky, err = check_sticky(u.sticky, path .. ".sticky")
    if not sticky then
      return nil, err
    end
  end
  if not is_array(u.members) then
    return nil, { path = path .. ".members", message = "must be an array" }
  end
  if #u.members > M.MAX_MEMBERS then
    return nil, { path = path .. ".members", message = "has more than " .. M.MAX_MEMBERS .. " members" }
  end
  local members, seen, sids = {}, {}, {}
  for i, raw in ipairs(u.members) do
    local mpath = path .. ".members[" .. (i - 1) .. "]"
    local m
    m, err = check_member(raw, mpath, sticky)
    if not m then
      return nil, err
    end
    if seen[m.endpoint] then
      return nil, { path = mpath .. ".endpoint", message = "is listed twice" }
    end
    if m.sid and sids[m.sid] then
      return nil, { path = mpath .. ".sid", message = "is used by another member" }
    end
    seen[m.endpoint] = true
    if m.sid then
      sids[m.sid] = true
    end
    members[i] = m
  end
  return { method = method, sticky = sticky, members = members }
end

--- {name = normalized upstream} of a whole document, or nil and {path=, message=}.
function M.document(doc)
  if not is_object(doc) or unknown_field(doc, { upstreams = true }) then
    return nil, { path = "", message = "must be an object with the single field upstreams" }
  end
  if not is_object(doc.upstreams) then
    return nil, { path = "upstreams", message = "must be an object of upstreams by name" }
  end
  local out, count = {}, 0
  for name, u in pairs(doc.upstreams) do
    local path = "upstreams." .. name
    if not M.name(name) then
      return nil, { path = path, message = "name must be 1-128 letters, digits, '_', '.' or '-'" }
    end
    count = count + 1
    if count > M.MAX_UPSTREAMS then
      return nil, { path = "upstreams", message = "has more than " .. M.MAX_UPSTREAMS .. " upstreams" }
    end
    local norm, err = M.upstream(u, path)
    if not norm then
      return nil, err
    end
    out[name] = norm
  end
  return out
end

return M
