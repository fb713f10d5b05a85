--- The layout of the L7 counters in shared memory and their Prometheus text (docs/metrics.md).
---
--- A scope's counters are one record: a string of doubles, field i at offset i (offset 0 unused),
--- so a scrape reads one shared-dict value per scope and per member instead of one per counter.
--- Lines go into LuaJIT string buffers: building each line as a Lua string would intern (hash)
--- every one of them. Labels are the scope's configuration IDs, escaped as the text format requires.
local ffi = require("ffi")
local buffer = require("string.buffer")
local floor, format, gsub, tobit = math.floor, string.format, string.gsub, bit.tobit
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

--- Put a number as Prometheus reads it and end the line. Counts are whole numbers: below 2^31 they
--- are written as integers (three times faster than a double's "%.14g"); a plain put writes 14
--- significant digits (sums of seconds to 1e-14) and stays in compiled code; putf, for the rare
--- whole number above 10^14, does not.
local function num(buf, v)
  if v >= 0 and v < 2147483648 and v == floor(v) then
    return buf:put(tobit(v), "\n")
  end
  if v < 1e14 and v > -1e14 then
    return buf:put(v, "\n")
  end
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
local member_cache = {} -- "<scope>\t<member>" → {load balancer, label text}
local instance_cache = {} -- load balancer → the label text of its instance totals

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

--- Whether any row has a non-zero value in ``fields`` (a list of field numbers): a family without
--- samples gets no header.
local function any(rows, fields)
  for r = 1, #rows do
    local p = rows[r][2]
    for i = 1, #fields do
      if p[fields[i]] ~= 0 then
        return true
      end
    end
  end
  return false
end

local function header(buf, fam)
  buf:put("# HELP ", fam[1], " ", fam[3], "\n# TYPE ", fam[1], " ", fam[2], "\n")
end

--- Requests by class (``fields``: REQ or MREQ), one line per non-zero counter.
local function by_class(buf, fam, rows, fields)
  local numbers = {}
  for i, f in ipairs(fields) do
    numbers[i] = f[1]
  end
  if not any(rows, numbers) then
    return
  end
  header(buf, fam)
  local family = fam[1] .. "{"
  for r = 1, #rows do
    local labels, p = rows[r][1], rows[r][2]
    for i = 1, #fields do
      local f = fields[i]
      local n = p[f[1]]
      if n ~= 0 then
        num(buf:put(family, labels, f[2]), n)
      end
    end
  end
end

--- One line per row (``suffix`` after the labels) of field ``field``; ``always``: zeros too.
local function single(buf, fam, rows, field, suffix, always)
  if not (always and #rows > 0 or any(rows, { field })) then
    return
  end
  header(buf, fam)
  local family = fam[1] .. "{"
  for r = 1, #rows do
    local n = rows[r][2][field]
    if always or n ~= 0 then
      num(buf:put(family, rows[r][1], suffix), n)
    end
  end
end

--- Two lines per row: fields ``a`` and ``b`` with the suffixes ``sa`` and ``sb``.
local function pair(buf, fam, rows, a, sa, b, sb)
  if #rows == 0 then
    return
  end
  header(buf, fam)
  local family = fam[1] .. "{"
  for r = 1, #rows do
    local labels, p = rows[r][1], rows[r][2]
    num(buf:put(family, labels, sa), p[a])
    num(buf:put(family, labels, sb), p[b])
  end
end

--- A histogram of the buckets after ``first`` and the sum field ``sum``; rows without a sample
--- have no series.
local function histogram(buf, fam, rows, first, sum)
  local fields = {}
  for i = 1, NB + 1 do
    fields[i] = first + i
  end
  if not any(rows, fields) then
    return
  end
  header(buf, fam)
  local bucket, count, total_ = fam[1] .. "_bucket{", fam[1] .. "_count{", fam[1] .. "_sum{"
  for r = 1, #rows do
    local labels, p = rows[r][1], rows[r][2]
    local total = 0
    for i = 1, NB + 1 do
      total = total + p[first + i]
    end
    if total ~= 0 then
      total = 0
      for i = 1, NB + 1 do
        total = total + p[first + i]
        num(buf:put(bucket, labels, BOUNDS[i]), total)
      end
      num(buf:put(count, labels, "} "), total)
      num(buf:put(total_, labels, "} "), p[sum])
    end
  end
end

--- This worker's text buffer, kept from one scrape to the next: a new ~10 MB buffer at every scrape
--- would page-fault its way through fresh memory (a third of the rendering time at 1,000 load
--- balancers).
local BUF = buffer.new(1024 * 1024)

--- The load balancer and the label text of a member key "<scope>\t<member>" (false: no such key).
local function member_labels(key)
  local hit = member_cache[key]
  if hit == nil then
    local scope, member = key:match("^([^\t]*)\t(.*)$")
    local found = scope and M.labels(scope)
    hit = found and { found[1], found[2] .. ',target="' .. escape(member) .. '"' } or false
    member_cache[key] = hit
  end
  return hit
end

--- The exposition of ``scopes`` (scope → record) and ``members`` ("<scope>\t<member>" → record);
--- scopes of load balancers not in ``served`` (when given) are left out, and so are values that
--- are no record of the expected size. ``connections`` (optional): state → number of nginx's
--- open client connections. One buffer, family after family: no text is copied twice.
function M.render(scopes, members, served, connections)
  local rows, mrows, totals, lbs = {}, {}, {}, {} -- rows: {label text, record}
  local size = (M.NFIELDS + 1) * 8
  for scope, record in pairs(scopes) do
    local found = #record == size and M.labels(scope)
    if found and (not served or served[found[1]]) then
      local lb, p = found[1], ffi.cast(RECORD, record)
      rows[#rows + 1] = { found[2], p, record } -- the record string keeps p's memory alive
      local t = totals[lb]
      if not t then
        t = { 0, 0 }
        totals[lb] = t
        lbs[#lbs + 1] = lb
      end
      t[1], t[2] = t[1] + p[M.BYTES_IN], t[2] + p[M.BYTES_OUT]
    end
  end
  size = (M.MFIELDS + 1) * 8
  for key, record in pairs(members) do
    local found = #record == size and member_labels(key)
    if found and (not served or served[found[1]]) then
      mrows[#mrows + 1] = { found[2], ffi.cast(RECORD, record), record }
    end
  end
  local buf = BUF:reset()
  local F = FAMILIES
  by_class(buf, F[1], rows, REQ)
  by_class(buf, F[2], rows, RESP)
  single(buf, F[3], rows, M.TIMEOUTS, "} ") -- rare: no series until the first one
  pair(buf, F[4], rows, M.BYTES_IN, ',direction="in"} ', M.BYTES_OUT, ',direction="out"} ')
  single(buf, F[5], rows, M.NEW_CONNS, "} ", true)
  histogram(buf, F[6], rows, M.RT_BUCKET, M.RT_SUM)
  histogram(buf, F[7], rows, M.UT_BUCKET, M.UT_SUM)
  by_class(buf, F[8], mrows, MREQ)
  if #mrows > 0 then
    header(buf, F[9])
    for r = 1, #mrows do
      local labels, p = mrows[r][1], mrows[r][2]
      num(buf:put("clb_http_backend_response_seconds_count{", labels, "} "), p[M.M_UT_COUNT])
      num(buf:put("clb_http_backend_response_seconds_sum{", labels, "} "), p[M.M_UT_SUM])
    end
  end
  pair(buf, F[10], mrows, M.M_BYTES_IN, ',direction="in"} ', M.M_BYTES_OUT, ',direction="out"} ')
  if connections and next(connections) then
    header(buf, F[11])
    for _, state in ipairs(CONNECTION_STATES) do
      local n = tonumber(connections[state])
      if n then
        num(buf:put('clb_http_connections{state="', state, '"} '), n)
      end
    end
  end
  -- the instance bytes always end the text, even without samples: the agent appends its L4
  -- samples of that family
  header(buf, F[12])
  for _, lb in ipairs(lbs) do
    local t, labels = totals[lb], instance_cache[lb]
    if not labels then
      labels = 'load_balancer="' .. escape(lb) .. '",layer="l7",direction='
      instance_cache[lb] = labels
    end
    num(buf:put("clb_instance_bytes_total{", labels, '"in"} '), t[1])
    num(buf:put("clb_instance_bytes_total{", labels, '"out"} '), t[2])
  end
  return buf:tostring()
end

return M
