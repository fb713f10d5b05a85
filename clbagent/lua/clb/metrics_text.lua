--- The layout of the L7 counters in shared memory and their Prometheus text (docs/metrics.md).
---
--- A scope's counters are one record: a string of doubles, field i at offset i (offset 0 unused),
--- so a scrape reads one shared-dict value per scope and per member instead of one per counter.
--- Lines go into LuaJIT string buffers: building each line as a Lua string would intern (hash)
--- every one of them. Labels are the scope's configuration IDs, escaped as the text format requires.
local ffi = require("ffi")
local buffer = require("string.buffer")
local floor, format, gsub = math.floor, string.format, string.gsub
local unescape = ngx and ngx.unescape_uri

local M = {}

--- Upper bounds (seconds) of the request and upstream time histograms; +Inf is implicit.
M.BUCKETS = { 0.005, 0.025, 0.1, 0.25, 0.5, 1, 2.5, 10 } -- few: buckets are most of the series
local NB = #M.BUCKETS

-- Fields of a scope. Requests by status class (+ 1..5) and source: the backend answered (B) or
-- the load balancer generated the response (L).
M.REQ_B, M.REQ_L = 0, 5
M.S404_B, M.S404_L, M.S502_B, M.S502_L, M.S504_B, M.S504_L = 11, 12, 13, 14, 15, 16
M.TIMEOUTS, M.BYTES_IN, M.BYTES_OUT, M.NEW_CONNS = 17, 18, 19, 20
M.RT_SUM, M.RT_BUCKET = 21, 21 -- + bucket index 1..NB+1
M.UT_SUM = M.RT_BUCKET + NB + 2
M.UT_COUNT, M.UT_BUCKET = M.UT_SUM + 1, M.UT_SUM + 1 -- + bucket index 1..NB+1
M.NFIELDS = M.UT_BUCKET + NB + 1
-- Fields of a member: requests by class and source, upstream time sum and count, bytes.
M.M_REQ_B, M.M_REQ_L, M.M_UT_SUM, M.M_UT_COUNT, M.M_BYTES_IN, M.M_BYTES_OUT = 0, 5, 11, 12, 13, 14
M.MFIELDS = 14

local DOUBLES = ffi.typeof("double[?]")
local RECORD = ffi.typeof("const double *")
local scratch = DOUBLES(M.NFIELDS + 1)

--- The record ``old`` (a string from the dict, or nil) plus the Lua array ``counts`` (1..n).
function M.merge(old, counts, n)
  local size = (n + 1) * 8
  if old and #old == size then
    ffi.copy(scratch, old, size)
  else
    ffi.fill(scratch, size)
  end
  for i = 1, n do
    scratch[i] = scratch[i] + counts[i]
  end
  return ffi.string(scratch, size)
end

--- The fields of a record as an array 1..n (for tests and tools); nil when it is no such record.
function M.unpack(record, n)
  if type(record) ~= "string" or #record ~= (n + 1) * 8 then
    return nil
  end
  local p, out = ffi.cast(RECORD, record), {}
  for i = 1, n do
    out[i] = p[i]
  end
  return out
end

local CLASSES = { "1xx", "2xx", "3xx", "4xx", "5xx" }
local SOURCES = { "backend", "lb" }
M.CONNECTION_STATES = { "active", "reading", "writing", "waiting" }
local CONNECTION_STATES = M.CONNECTION_STATES

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
  { "clb_http_connections", "gauge", "Client connections of the whole nginx (every listener, the control channel included) by state" },
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

--- {field, label text} of the requests by class (scope fields or member fields) and of the responses.
local function by_class_fields(b, l)
  local out = {}
  for class = 1, 5 do
    for s, base in ipairs({ b, l }) do
      out[#out + 1] = { base + class, ',code="' .. CLASSES[class] .. '",source="' .. SOURCES[s] .. '"} ' }
    end
  end
  return out
end
local REQ, MREQ = by_class_fields(M.REQ_B, M.REQ_L), by_class_fields(M.M_REQ_B, M.M_REQ_L)
local RESP = {}
for _, c in ipairs({ { "404", M.S404_B, M.S404_L }, { "502", M.S502_B, M.S502_L }, { "504", M.S504_B, M.S504_L } }) do
  RESP[#RESP + 1] = { c[2], ',code="' .. c[1] .. '",source="backend"} ' }
  RESP[#RESP + 1] = { c[3], ',code="' .. c[1] .. '",source="lb"} ' }
end

--- A bucket bound as Prometheus' clients write it (1 → "1.0").
local function le(b)
  return b == floor(b) and format("%d.0", b) or tostring(b)
end
local BOUNDS = {} -- bucket index → ',le="…"} '
for i = 1, NB + 1 do
  BOUNDS[i] = ',le="' .. (M.BUCKETS[i] and le(M.BUCKETS[i]) or "+Inf") .. '"} '
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

local function nonzero(buf, family, labels, p, fields)
  for i = 1, #fields do
    local f = fields[i]
    local n = p[f[1]]
    if n ~= 0 then
      num(buf:put(family, labels, f[2]), n)
    end
  end
end

local function histogram(buf, family, labels, p, first, sum)
  local total = 0
  for i = 1, NB + 1 do
    total = total + p[first + i]
  end
  if total == 0 then
    return
  end
  total = 0
  for i = 1, NB + 1 do
    total = total + p[first + i]
    num(buf:put(family, "_bucket{", labels, BOUNDS[i]), total)
  end
  num(buf:put(family, "_count{", labels, "} "), total)
  num(buf:put(family, "_sum{", labels, "} "), p[sum])
end

--- The exposition of ``scopes`` (scope → record) and ``members`` ("<scope>\t<member>" → record);
--- scopes of load balancers not in ``served`` (when given) are left out, and so are values that
--- are no record of the expected size. ``connections`` (optional): state → number of nginx's
--- open client connections.
function M.render(scopes, members, served, connections)
  local out = {}
  for _, fam in ipairs(FAMILIES) do
    out[fam[1]] = buffer.new()
  end
  local requests, responses, bytes = out.clb_http_requests_total, out.clb_http_responses_total, out.clb_http_bytes_total
  local totals = {} -- load balancer → {in, out}
  local size = (M.NFIELDS + 1) * 8
  for scope, record in pairs(scopes) do
    local found = #record == size and M.labels(scope)
    if found and (not served or served[found[1]]) then
      local lb, labels, p = found[1], found[2], ffi.cast(RECORD, record)
      nonzero(requests, "clb_http_requests_total{", labels, p, REQ)
      nonzero(responses, "clb_http_responses_total{", labels, p, RESP)
      if p[M.TIMEOUTS] ~= 0 then -- rare: no series until the first one
        num(out.clb_http_response_timeouts_total:put("clb_http_response_timeouts_total{", labels, "} "), p[M.TIMEOUTS])
      end
      local bytes_in, bytes_out = p[M.BYTES_IN], p[M.BYTES_OUT]
      num(bytes:put("clb_http_bytes_total{", labels, ',direction="in"} '), bytes_in)
      num(bytes:put("clb_http_bytes_total{", labels, ',direction="out"} '), bytes_out)
      num(out.clb_http_new_connections_total:put("clb_http_new_connections_total{", labels, "} "), p[M.NEW_CONNS])
      histogram(out.clb_http_request_duration_seconds, "clb_http_request_duration_seconds", labels, p, M.RT_BUCKET, M.RT_SUM)
      histogram(out.clb_http_upstream_response_seconds, "clb_http_upstream_response_seconds", labels, p, M.UT_BUCKET, M.UT_SUM)
      local t = totals[lb]
      if not t then
        t = { 0, 0 }
        totals[lb] = t
      end
      t[1], t[2] = t[1] + bytes_in, t[2] + bytes_out
    end
  end
  size = (M.MFIELDS + 1) * 8
  for key, record in pairs(members) do
    local scope, member = key:match("^([^\t]*)\t(.*)$")
    local found = scope and #record == size and M.labels(scope)
    if found and (not served or served[found[1]]) then
      local labels, p = found[2] .. ',target="' .. escape(member) .. '"', ffi.cast(RECORD, record)
      nonzero(out.clb_http_backend_requests_total, "clb_http_backend_requests_total{", labels, p, MREQ)
      local buf = out.clb_http_backend_response_seconds
      num(buf:put("clb_http_backend_response_seconds_count{", labels, "} "), p[M.M_UT_COUNT])
      num(buf:put("clb_http_backend_response_seconds_sum{", labels, "} "), p[M.M_UT_SUM])
      buf = out.clb_http_backend_bytes_total
      num(buf:put("clb_http_backend_bytes_total{", labels, ',direction="in"} '), p[M.M_BYTES_IN])
      num(buf:put("clb_http_backend_bytes_total{", labels, ',direction="out"} '), p[M.M_BYTES_OUT])
    end
  end
  local buf = out.clb_http_connections
  for _, state in ipairs(CONNECTION_STATES) do
    local n = connections and tonumber(connections[state])
    if n then
      num(buf:put('clb_http_connections{state="', state, '"} '), n)
    end
  end
  buf = out.clb_instance_bytes_total
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
