--- The Prometheus text of the L7 counters (docs/metrics.md), written inside nginx: at 1,000 load
--- balancers a scrape has ~100,000 series. Lines go into LuaJIT string buffers: building each line
--- as a Lua string would intern (hash) every one of them, and cost as much as the agent's Python.
--- Input: the counters grouped by scope and by "<scope>\t<member>" (see clb.metrics); labels are
--- the scope's configuration IDs, escaped as the text format requires.
local buffer = require("string.buffer")
local floor, format, gsub = math.floor, string.format, string.gsub
local unescape = ngx and ngx.unescape_uri

local M = {}

local CLASSES = { "1xx", "2xx", "3xx", "4xx", "5xx" }
local SOURCES = { "backend", "lb" }
local CODES = { "404", "502", "504" }

-- name, type, help, in the order of the exposition
local FAMILIES = {
  { "clb_http_requests_total", "counter", "Requests by status class and by who answered: the backend, or the load balancer itself" },
  { "clb_http_responses_total", "counter", "Responses 404, 502 and 504, by who answered: the backend, or the load balancer itself" },
  { "clb_http_response_timeouts_total", "counter", "Requests the backend did not answer in time (504 from the load balancer)" },
  { "clb_http_bytes_total", "counter", "Bytes of requests received (in) and responses sent (out), headers included" },
  { "clb_http_new_connections_total", "counter", "Client connections whose first request went to this scope" },
  { "clb_http_request_duration_seconds", "histogram", "Time from the first byte of the request to the last byte of the response" },
  { "clb_http_upstream_response_seconds", "histogram", "Time the backend took to answer (the last try)" },
  { "clb_http_backend_requests_total", "counter", "Requests whose last try went to this target, by status class and who answered" },
  { "clb_http_backend_response_seconds", "summary", "Time this target took to answer" },
  { "clb_http_backend_bytes_total", "counter", "Bytes of the requests whose last try went to this target, received (in) and sent (out)" },
  { "clb_instance_bytes_total", "counter", "Bytes of the load balancer from clients (in) and to them (out), by layer (l7: requests and responses)" },
}

local ESCAPES = { ["\\"] = "\\\\", ['"'] = '\\"', ["\n"] = "\\n" }

local function escape(text)
  return (gsub(text, '[\\"\n]', ESCAPES))
end

--- Put a number as Prometheus reads it (integers without an exponent up to 2^53) and end the line.
local function num(buf, v)
  if v == floor(v) and v < 9007199254740992 and v > -9007199254740992 then
    return buf:putf("%d\n", v)
  end
  return buf:putf("%.17g\n", v)
end

local REQ, RESP = {}, {} -- {field name, label text} of the request and response counters
for _, class in ipairs(CLASSES) do
  for _, source in ipairs(SOURCES) do
    REQ[#REQ + 1] = { "req " .. class .. " " .. source, ',code="' .. class .. '",source="' .. source .. '"} ' }
  end
end
for _, code in ipairs(CODES) do
  for _, source in ipairs(SOURCES) do
    RESP[#RESP + 1] = { "code " .. code .. " " .. source, ',code="' .. code .. '",source="' .. source .. '"} ' }
  end
end

--- A bucket bound as Prometheus' clients write it (1 → "1.0").
local function le(b)
  return b == floor(b) and format("%d.0", b) or tostring(b)
end

local label_cache = {} -- scope → {load balancer, label text}; scopes come from the configuration

--- The load balancer and the label text of a scope "<lb>/<listener>/<rule>/<domain %-encoded>".
function M.labels(scope)
  local hit = label_cache[scope]
  if hit == nil then
    local lb, listener, rule, domain = scope:match("^([^/]*)/([^/]*)/([^/]*)/([^/]*)$")
    if lb then
      hit = {
        lb,
        'load_balancer="' .. escape(lb) .. '",listener="' .. escape(listener) .. '",rule="' .. escape(rule)
          .. '",domain="' .. escape(unescape(domain)) .. '"',
      }
    else
      hit = false
    end
    label_cache[scope] = hit
  end
  return hit
end

local function by_class(buf, family, labels, f)
  for _, r in ipairs(REQ) do
    local n = f[r[1]]
    if n and n ~= 0 then
      num(buf:put(family, "{", labels, r[2]), n)
    end
  end
end

local function histogram(buf, family, labels, f, kind, bounds)
  local counts, any = {}, false
  for i, b in ipairs(bounds) do
    local n = f[b[kind]] or 0
    counts[i] = n
    any = any or n ~= 0
  end
  if not any then
    return
  end
  local total = 0
  for i, b in ipairs(bounds) do
    total = total + counts[i]
    num(buf:put(family, "_bucket{", labels, ',le="', b.le, '"} '), total)
  end
  num(buf:put(family, "_count{", labels, "} "), total)
  num(buf:put(family, "_sum{", labels, "} "), f[kind .. " sum"] or 0)
end

--- The exposition of ``scopes`` (scope → field → n) and ``members`` ("<scope>\t<member>" → field →
--- n) with histogram ``buckets``; scopes of load balancers not in ``served`` (when given) are left out.
function M.render(scopes, members, buckets, served)
  local bounds = {}
  for i, b in ipairs(buckets) do
    bounds[i] = { rt = "rt " .. tostring(b), ut = "ut " .. tostring(b), le = le(b) }
  end
  bounds[#bounds + 1] = { rt = "rt +Inf", ut = "ut +Inf", le = "+Inf" }
  local out = {}
  for _, fam in ipairs(FAMILIES) do
    out[fam[1]] = buffer.new()
  end
  local totals = {} -- load balancer → {in, out}
  for scope, f in pairs(scopes) do
    local found = M.labels(scope)
    if found and (not served or served[found[1]]) then
      local lb, labels = found[1], found[2]
      by_class(out.clb_http_requests_total, "clb_http_requests_total", labels, f)
      local buf = out.clb_http_responses_total
      for _, r in ipairs(RESP) do
        local n = f[r[1]]
        if n and n ~= 0 then
          num(buf:put("clb_http_responses_total{", labels, r[2]), n)
        end
      end
      if f.timeouts then -- rare: no series until the first one
        num(out.clb_http_response_timeouts_total:put("clb_http_response_timeouts_total{", labels, "} "), f.timeouts)
      end
      local bytes_in, bytes_out = f["bytes in"] or 0, f["bytes out"] or 0
      buf = out.clb_http_bytes_total
      num(buf:put("clb_http_bytes_total{", labels, ',direction="in"} '), bytes_in)
      num(buf:put("clb_http_bytes_total{", labels, ',direction="out"} '), bytes_out)
      num(out.clb_http_new_connections_total:put("clb_http_new_connections_total{", labels, "} "), f.conns or 0)
      histogram(out.clb_http_request_duration_seconds, "clb_http_request_duration_seconds", labels, f, "rt", bounds)
      histogram(out.clb_http_upstream_response_seconds, "clb_http_upstream_response_seconds", labels, f, "ut", bounds)
      local t = totals[lb]
      if not t then
        t = { 0, 0 }
        totals[lb] = t
      end
      t[1], t[2] = t[1] + bytes_in, t[2] + bytes_out
    end
  end
  for key, f in pairs(members) do
    local scope, member = key:match("^([^\t]*)\t(.*)$")
    local found = scope and M.labels(scope)
    if found and (not served or served[found[1]]) then
      local labels = found[2] .. ',target="' .. escape(member) .. '"'
      by_class(out.clb_http_backend_requests_total, "clb_http_backend_requests_total", labels, f)
      local buf = out.clb_http_backend_response_seconds
      num(buf:put("clb_http_backend_response_seconds_count{", labels, "} "), f["ut count"] or 0)
      num(buf:put("clb_http_backend_response_seconds_sum{", labels, "} "), f["ut sum"] or 0)
      buf = out.clb_http_backend_bytes_total
      num(buf:put("clb_http_backend_bytes_total{", labels, ',direction="in"} '), f["bytes in"] or 0)
      num(buf:put("clb_http_backend_bytes_total{", labels, ',direction="out"} '), f["bytes out"] or 0)
    end
  end
  local buf = out.clb_instance_bytes_total
  for lb, t in pairs(totals) do
    local labels = 'load_balancer="' .. escape(lb) .. '",layer="l7",direction='
    num(buf:put("clb_instance_bytes_total{", labels, '"in"} '), t[1])
    num(buf:put("clb_instance_bytes_total{", labels, '"out"} '), t[2])
  end
  -- every family with samples; the last one (instance bytes) always, even empty: the agent
  -- appends its L4 samples of that family to this text
  local text = buffer.new()
  for i, fam in ipairs(FAMILIES) do
    local name = fam[1]
    if #out[name] > 0 or i == #FAMILIES then
      text:put("# HELP ", name, " ", fam[3], "\n# TYPE ", name, " ", fam[2], "\n")
      text:put(out[name])
    end
  end
  return text:tostring()
end

return M
