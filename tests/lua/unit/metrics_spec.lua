--- clb.metrics with a stand-in for ngx: what one request adds, and the flush into the shared dict.

local LOG_VAR = "clb_log_test"
local S = "lb-1/lbl-1/loc-1/www.example.com"

local dict = require("shared_dict").new

--- The counters a record holds, by name (zeros left out), as the text shows them.
local function counters(data, key)
  local text = require("clb.metrics_text")
  local member = key:find("\t", 1, true) ~= nil
  local values = text.unpack(data[(member and "\3" or "\2") .. key], member and text.MFIELDS or text.NFIELDS)
  if not values then
    return {}
  end
  local names = {}
  local req_b, req_l = member and text.M_REQ_B or text.REQ_B, member and text.M_REQ_L or text.REQ_L
  for class = 1, 5 do
    names[req_b + class], names[req_l + class] = "req " .. class .. "xx backend", "req " .. class .. "xx lb"
  end
  if member then
    names[text.M_UT_SUM], names[text.M_UT_COUNT] = "ut sum", "ut count"
    names[text.M_BYTES_IN], names[text.M_BYTES_OUT] = "bytes in", "bytes out"
  else
    names[text.S404_B], names[text.S404_L] = "code 404 backend", "code 404 lb"
    names[text.S502_B], names[text.S502_L] = "code 502 backend", "code 502 lb"
    names[text.S504_B], names[text.S504_L] = "code 504 backend", "code 504 lb"
    names[text.TIMEOUTS], names[text.BYTES_IN], names[text.BYTES_OUT] = "timeouts", "bytes in", "bytes out"
    names[text.NEW_CONNS], names[text.RT_SUM], names[text.UT_SUM], names[text.UT_COUNT] = "conns", "rt sum", "ut sum", "ut count"
    for i, b in ipairs(text.BUCKETS) do
      names[text.RT_BUCKET + i], names[text.UT_BUCKET + i] = "rt " .. b, "ut " .. b
    end
    names[text.RT_BUCKET + #text.BUCKETS + 1], names[text.UT_BUCKET + #text.BUCKETS + 1] = "rt +Inf", "ut +Inf"
  end
  local out = {}
  for i, v in ipairs(values) do
    if v ~= 0 then
      out[names[i]] = v
    end
  end
  return out
end

local timer -- the flush timer the module started
local START, elapsed = 1700000000.123, 0 -- the request's start and its $request_time

local function fresh(capacity)
  timer = nil
  _G.ngx = {
    var = {},
    now = function() -- ngx.now() and ngx.req.start_time() are nginx's cached times, in ms
      return START + elapsed
    end,
    req = {
      start_time = function()
        return START
      end,
    },
    shared = { clb_metrics = dict(capacity) },
    timer = {
      every = function(_, callback)
        timer = callback
        return true
      end,
    },
    log = function() end,
    sleep = function() end,
    WARN = 5,
    ERR = 4,
  }
  package.loaded["clb.metrics"] = nil
  local m = require("clb.metrics")
  m.start()
  return m, ngx.shared.clb_metrics.data
end

--- The variable nginx joins for the log phase (metrics_channel.LOG_FIELDS), from a request's values.
local function request(m, status, vars)
  local v = function(name, default)
    return vars[name] or default
  end
  ngx.status, elapsed = status, tonumber(v("request_time", "0.000"))
  ngx.var[LOG_VAR] = table.concat({
    v("request_length", "0"),
    v("bytes_sent", "0"),
    v("connection_requests", "2"),
    v("upstream_header_time", ""),
    v("upstream_response_time", ""),
    v("upstream_addr", ""),
    v("scope", S),
  }, "|")
  m.log(LOG_VAR)
end

local BACKEND_200 = function()
  return {
    upstream_header_time = "0.002",
    upstream_response_time = "0.003",
    upstream_addr = "10.0.0.1:80",
    request_length = "100",
    bytes_sent = "250",
    request_time = "0.004",
    connection_requests = "1",
  }
end

describe("clb.metrics", function()
  it("counts a backend response per scope and per member", function()
    local m, data = fresh()
    request(m, 200, BACKEND_200())
    request(m, 200, BACKEND_200())
    m.flush()
    assert.equal(2, counters(data, S)["req 2xx backend"])
    assert.equal(200, counters(data, S)["bytes in"])
    assert.equal(500, counters(data, S)["bytes out"])
    assert.equal(2, counters(data, S)["conns"])
    assert.equal(2, counters(data, S)["rt 0.005"])
    assert.equal(2, counters(data, S)["ut count"])
    assert.equal(2, counters(data, S .. "\t10.0.0.1:80")["req 2xx backend"])
    assert.near(0.006, counters(data, S .. "\t10.0.0.1:80")["ut sum"], 1e-9)
    m.flush() -- nothing new: nothing added twice
    assert.equal(2, counters(data, S)["req 2xx backend"])
  end)

  it("tells the load balancer's own answers from the backend's", function()
    local m, data = fresh()
    request(m, 404, { request_length = "80", bytes_sent = "150", request_time = "0.000" })
    request(m, 502, BACKEND_200()) -- a backend answering 502
    request(m, 504, { -- the backend timed out: nginx answers 504
      upstream_header_time = "-",
      upstream_response_time = "60.001",
      upstream_addr = "10.0.0.1:80",
      request_time = "60.002",
    })
    m.flush()
    assert.equal(1, counters(data, S)["req 4xx lb"])
    assert.equal(1, counters(data, S)["code 404 lb"])
    assert.is_nil(counters(data, S)["code 404 backend"])
    assert.equal(1, counters(data, S)["code 502 backend"])
    assert.is_nil(counters(data, S)["code 502 lb"])
    assert.equal(1, counters(data, S)["code 504 lb"])
    assert.equal(1, counters(data, S)["timeouts"])
    assert.equal(1, counters(data, S)["rt +Inf"]) -- 60.002 s: above the last bound
    assert.equal(1, counters(data, S)["ut +Inf"])
    assert.equal(1, counters(data, S .. "\t10.0.0.1:80")["req 5xx lb"])
  end)

  it("puts a request on the member of its last try, never on an upstream name", function()
    local m, data = fresh()
    local vars = BACKEND_200()
    vars.upstream_addr, vars.upstream_header_time = "10.0.0.1:80, 10.0.0.2:80", "-, 0.002"
    vars.upstream_response_time = "4.000, 0.003"
    request(m, 200, vars)
    request(m, 502, { upstream_addr = "u_abc_loc", upstream_response_time = "0.000", upstream_header_time = "-" })
    m.flush()
    assert.equal(1, counters(data, S .. "\t10.0.0.2:80")["req 2xx backend"])
    assert.is_nil(counters(data, S .. "\t10.0.0.1:80")["req 2xx backend"])
    assert.same({}, counters(data, S .. "\tu_abc_loc")) -- no member record under an upstream's name
    assert.equal(2, counters(data, S)["ut 0.005"]) -- the last try's time (0.003), and the 0.000 of no peer
  end)

  it("counts a last upstream that made no try (after an internal redirect) as the load balancer's", function()
    local m, data = fresh()
    local vars = BACKEND_200()
    vars.upstream_header_time, vars.upstream_response_time = "0.002 : ", "0.003 : "
    vars.upstream_addr = "10.0.0.1:80 : "
    request(m, 502, vars)
    m.flush()
    assert.equal(1, counters(data, S)["req 5xx lb"])
    assert.equal(1, counters(data, S)["code 502 lb"])
    assert.is_nil(counters(data, S)["ut count"])
    assert.same({}, counters(data, S .. "\t10.0.0.1:80"))
  end)

  it("counts nothing without a scope", function()
    local m, data = fresh()
    request(m, 200, { scope = "" })
    ngx.var[LOG_VAR] = nil -- an nginx without the variable
    m.log(LOG_VAR)
    m.flush()
    assert.same({}, data)
  end)

  it("reads nginx's times to the millisecond, whole seconds and several tries included", function()
    local m, data = fresh()
    local vars = BACKEND_200()
    vars.request_time, vars.upstream_response_time = "12.345", "0.000, 0.025 : 2.500"
    vars.upstream_header_time, vars.upstream_addr = "-, 0.020 : 2.400", "10.0.0.1:80, 10.0.0.2:80 : 10.0.0.3:80"
    request(m, 200, vars)
    vars = BACKEND_200()
    vars.request_time, vars.upstream_response_time = "0.005", "0.100"
    request(m, 200, vars)
    m.flush()
    local c = counters(data, S)
    assert.near(12.35, c["rt sum"], 1e-9)
    assert.equal(1, c["rt 0.005"]) -- a bound holds its own value
    assert.equal(1, c["rt +Inf"])
    assert.near(2.6, c["ut sum"], 1e-9)
    assert.equal(1, c["ut 2.5"])
    assert.equal(1, c["ut 0.1"])
    assert.equal(1, counters(data, S .. "\t10.0.0.3:80")["req 2xx backend"])
    assert.equal(1, counters(data, S .. "\t10.0.0.1:80")["req 2xx backend"]) -- the second request only
  end)

  it("adds a full buffer at once, and flushes what the buffer holds", function()
    local m, data = fresh()
    for _ = 1, m.BATCH + 3 do
      request(m, 200, BACKEND_200())
    end
    m.flush()
    assert.equal(m.BATCH + 3, counters(data, S)["req 2xx backend"])
    assert.equal(m.BATCH + 3, counters(data, S .. "\t10.0.0.1:80")["req 2xx backend"])
  end)

  it("writes each request directly once the worker drains, and loses none at its exit", function()
    local m, data = fresh()
    request(m, 200, BACKEND_200())
    timer(true) -- the worker exits: the last flush
    assert.equal(1, counters(data, S)["req 2xx backend"])
    request(m, 404, { request_length = "80", bytes_sent = "150" })
    assert.equal(1, counters(data, S)["req 4xx lb"]) -- no flush: written by the log phase
    request(m, 200, BACKEND_200())
    assert.equal(2, counters(data, S .. "\t10.0.0.1:80")["req 2xx backend"])
  end)

  it("keeps counts for the next flush when the dict is full, never evicting", function()
    local m, data = fresh(2) -- room for the scope's record and a lock: not for the member's record
    request(m, 200, BACKEND_200())
    m.flush()
    assert.equal(1, counters(data, S)["req 2xx backend"])
    assert.same({}, counters(data, S .. "\t10.0.0.1:80"))
    ngx.shared.clb_metrics = dict() -- room again
    data = ngx.shared.clb_metrics.data
    m.flush()
    assert.same({}, counters(data, S)) -- already written: not again
    assert.same({ ["req 2xx backend"] = 1, ["ut count"] = 1, ["ut sum"] = 0.003, ["bytes in"] = 100, ["bytes out"] = 250 },
      counters(data, S .. "\t10.0.0.1:80"))
  end)

  it("waits for another worker's lock and adds to its counts", function()
    local m, data = fresh()
    request(m, 200, BACKEND_200())
    m.flush()
    local d, tries = ngx.shared.clb_metrics, 0
    d.data["\1\2" .. S] = true -- another worker merges into the scope's record
    ngx.sleep = function()
      tries = tries + 1
      if tries == 3 then
        d:delete("\1\2" .. S)
      end
    end
    request(m, 200, BACKEND_200())
    m.flush(true)
    assert.equal(3, tries)
    assert.equal(2, counters(data, S)["req 2xx backend"])
  end)
end)
