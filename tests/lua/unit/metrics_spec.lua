--- clb.metrics with a stand-in for ngx: what one request adds, and the flush into the shared dict.

local SCOPE_VAR = "clb_scope_test"
local S = "lb-1/lbl-1/loc-1/www.example.com"

--- ngx.shared.DICT for the calls the module makes (incr without init fails on a missing key,
--- safe_add refuses when full).
local function dict(capacity)
  local d = { data = {}, n = 0 }
  function d:get(k)
    return self.data[k]
  end
  function d:incr(k, by, init)
    local v = self.data[k]
    if v == nil then
      if init == nil then
        return nil, "not found"
      end
      v, self.n = init, self.n + 1
    end
    self.data[k] = v + by
    return v + by
  end
  function d:safe_add(k, v)
    if self.data[k] ~= nil then
      return false, "exists"
    end
    if self.n >= (capacity or math.huge) then
      return false, "no memory"
    end
    self.data[k], self.n = v, self.n + 1
    return true
  end
  return d
end

local function fresh(capacity)
  _G.ngx = {
    var = {},
    status = 200,
    shared = { clb_metrics = dict(capacity) },
    req = {
      start_time = function()
        return 1000
      end,
    },
    timer = {
      every = function()
        return true
      end,
    },
    log = function() end,
    WARN = 5,
    ERR = 4,
  }
  package.loaded["clb.metrics"] = nil
  return require("clb.metrics"), ngx.shared.clb_metrics.data
end

local function request(m, status, vars)
  ngx.status = status
  ngx.var = vars
  local seconds = tonumber(vars.request_time or "0") -- what nginx would log as $request_time
  ngx.now = function()
    return 1000 + seconds
  end
  vars[SCOPE_VAR] = vars[SCOPE_VAR] == nil and S or vars[SCOPE_VAR]
  m.log(SCOPE_VAR)
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
    assert.equal(2, data[S .. "\treq 2xx backend"])
    assert.equal(200, data[S .. "\tbytes in"])
    assert.equal(500, data[S .. "\tbytes out"])
    assert.equal(2, data[S .. "\tconns"])
    assert.equal(2, data[S .. "\trt 0.005"])
    assert.equal(2, data[S .. "\tut count"])
    assert.equal(2, data[S .. "\t10.0.0.1:80\treq 2xx backend"])
    assert.near(0.006, data[S .. "\t10.0.0.1:80\tut sum"], 1e-9)
    m.flush() -- nothing new: nothing added twice
    assert.equal(2, data[S .. "\treq 2xx backend"])
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
    assert.equal(1, data[S .. "\treq 4xx lb"])
    assert.equal(1, data[S .. "\tcode 404 lb"])
    assert.is_nil(data[S .. "\tcode 404 backend"])
    assert.equal(1, data[S .. "\tcode 502 backend"])
    assert.is_nil(data[S .. "\tcode 502 lb"])
    assert.equal(1, data[S .. "\tcode 504 lb"])
    assert.equal(1, data[S .. "\ttimeouts"])
    assert.equal(1, data[S .. "\trt +Inf"]) -- 60.002 s: above the last bound
    assert.equal(1, data[S .. "\tut +Inf"])
    assert.equal(1, data[S .. "\t10.0.0.1:80\treq 5xx lb"])
  end)

  it("puts a request on the member of its last try, never on an upstream name", function()
    local m, data = fresh()
    local vars = BACKEND_200()
    vars.upstream_addr, vars.upstream_header_time = "10.0.0.1:80, 10.0.0.2:80", "-, 0.002"
    vars.upstream_response_time = "4.000, 0.003"
    request(m, 200, vars)
    request(m, 502, { upstream_addr = "u_abc_loc", upstream_response_time = "0.000", upstream_header_time = "-" })
    m.flush()
    assert.equal(1, data[S .. "\t10.0.0.2:80\treq 2xx backend"])
    assert.is_nil(data[S .. "\t10.0.0.1:80\treq 2xx backend"])
    assert.is_nil(data[S .. "\tu_abc_loc\treq 5xx lb"])
    assert.equal(2, data[S .. "\tut 0.005"]) -- the last try's time (0.003), and the 0.000 of no peer
  end)

  it("counts nothing without a scope", function()
    local m, data = fresh()
    request(m, 200, { [SCOPE_VAR] = "" })
    m.flush()
    assert.same({}, data)
  end)

  it("keeps counts for the next flush when the dict is full, never evicting", function()
    local m, data = fresh(3)
    request(m, 200, BACKEND_200())
    m.flush()
    local held = 0
    for _ in pairs(data) do
      held = held + 1
    end
    assert.equal(3, held)
    ngx.shared.clb_metrics = dict() -- room again
    data = ngx.shared.clb_metrics.data
    m.flush()
    local rest = 0
    for _ in pairs(data) do
      rest = rest + 1
    end
    assert.equal(9 + 5 - 3, rest) -- every field of the request (9 of the scope, 5 of the member), once
  end)
end)
