--- clb.metrics_text: the Prometheus text of grouped counters.

_G.ngx = _G.ngx or {}
ngx.unescape_uri = ngx.unescape_uri
  or function(s)
    return (s:gsub("%%(%x%x)", function(h)
      return string.char(tonumber(h, 16))
    end))
  end
package.loaded["clb.metrics_text"] = nil
local text = require("clb.metrics_text")


--- A record of ``n`` fields holding ``values`` (field → number), as the flush writes it.
local function record(n, values)
  local counts = {}
  for i = 1, n do
    counts[i] = values[i] or 0
  end
  return text.merge(nil, counts, n)
end
local S = "lb-1/lbl-1/loc-1/~%5Ea%22b%5Cc%24" -- the domain ~^a"b\c$, percent-encoded
local LABELS = 'load_balancer="lb-1",listener="lbl-1",rule="loc-1",domain="~^a\\"b\\\\c$"'

local function lines(s)
  local out = {}
  for line in s:gmatch("[^\n]+") do
    out[line] = true
  end
  return out
end

describe("clb.metrics_text", function()
  it("writes requests, histograms (cumulative, +Inf = count), members, connections and instance bytes", function()
    local rt = text.RT_BUCKET
    local scopes = {
      [S] = record(text.NFIELDS, {
        [text.REQ_B + 2] = 7,
        [text.S502_L] = 1,
        [text.BYTES_IN] = 900,
        [text.BYTES_OUT] = 4000,
        [rt + 1] = 5, -- 0.005
        [rt + 6] = 3, -- 1
        [rt + #text.BUCKETS + 1] = 1, -- +Inf
        [text.RT_SUM] = 70.5,
      }),
    }
    local members = {
      [S .. "\t10.0.0.1:80"] = record(text.MFIELDS, {
        [text.M_REQ_B + 2] = 7,
        [text.M_UT_COUNT] = 7,
        [text.M_UT_SUM] = 0.25,
      }),
    }
    local got = lines(text.render(scopes, members, nil, { active = "3", reading = "0", writing = "1", waiting = "2" }))
    assert.is_true(got["clb_http_requests_total{" .. LABELS .. ',code="2xx",source="backend"} 7'])
    assert.is_nil(got["clb_http_requests_total{" .. LABELS .. ',code="2xx",source="lb"} 0']) -- zeros: no series yet
    assert.is_true(got["clb_http_responses_total{" .. LABELS .. ',code="502",source="lb"} 1'])
    assert.is_true(got["clb_http_bytes_total{" .. LABELS .. ',direction="out"} 4000'])
    assert.is_true(got["clb_http_new_connections_total{" .. LABELS .. "} 0"])
    assert.is_true(got["clb_http_request_duration_seconds_bucket{" .. LABELS .. ',le="0.005"} 5'])
    assert.is_true(got["clb_http_request_duration_seconds_bucket{" .. LABELS .. ',le="0.5"} 5'])
    assert.is_true(got["clb_http_request_duration_seconds_bucket{" .. LABELS .. ',le="1.0"} 8'])
    assert.is_true(got["clb_http_request_duration_seconds_bucket{" .. LABELS .. ',le="10.0"} 8'])
    assert.is_true(got["clb_http_request_duration_seconds_bucket{" .. LABELS .. ',le="+Inf"} 9'])
    assert.is_true(got["clb_http_request_duration_seconds_count{" .. LABELS .. "} 9"])
    assert.is_true(got["clb_http_request_duration_seconds_sum{" .. LABELS .. "} 70.5"])
    assert.is_nil(got["# TYPE clb_http_upstream_response_seconds histogram"]) -- no backend time: no family
    local member = LABELS .. ',target="10.0.0.1:80"'
    assert.is_true(got["clb_http_backend_requests_total{" .. member .. ',code="2xx",source="backend"} 7'])
    assert.is_true(got["clb_http_backend_response_seconds_sum{" .. member .. "} 0.25"])
    assert.is_true(got['clb_http_connections{state="active"} 3'])
    assert.is_true(got['clb_http_connections{state="waiting"} 2'])
    assert.is_true(got['clb_instance_bytes_total{load_balancer="lb-1",layer="l7",direction="in"} 900'])
  end)

  it("adds a flush to a record, and skips values of another size", function()
    local counts = { 1, 2, 3 }
    local merged = text.merge(text.merge(nil, counts, 3), counts, 3)
    assert.same({ 2, 4, 6 }, text.unpack(merged, 3))
    assert.is_nil(text.unpack(merged, 4))
    assert.equal("", text.render({ [S] = merged }, { [S .. "\tx"] = merged }):match("clb_http_requests_total") or "")
  end)

  it("leaves out load balancers not served and ends with the instance-bytes header", function()
    local one = record(text.NFIELDS, { [text.REQ_B + 2] = 1 })
    local out = text.render({ [S] = one, ["lb-2/l/r/d"] = one }, {}, { ["lb-2"] = true })
    assert.is_nil(out:find("lb-1", 1, true))
    assert.truthy(out:find('load_balancer="lb-2"', 1, true))
    local empty = text.render({}, {})
    assert.equal(
      "# HELP clb_instance_bytes_total Bytes of the load balancer from clients (in) and to them (out), by layer"
        .. " (l7: requests and responses)\n# TYPE clb_instance_bytes_total counter\n",
      empty
    )
    assert.truthy(out:find("# TYPE clb_instance_bytes_total counter\n", 1, true) > out:find("clb_http_requests_total", 1, true))
  end)

  it("writes whole numbers exactly at any size, and a second text has nothing of the first", function()
    local big = record(text.NFIELDS, {
      [text.REQ_B + 2] = 2147483647,
      [text.BYTES_IN] = 2147483648 + 5,
      [text.BYTES_OUT] = 1e15 + 1,
      [text.RT_BUCKET + 1] = 1,
      [text.RT_SUM] = 0.0015,
    })
    local got = lines(text.render({ [S] = big }, {}))
    assert.is_true(got["clb_http_requests_total{" .. LABELS .. ',code="2xx",source="backend"} 2147483647'])
    assert.is_true(got["clb_http_bytes_total{" .. LABELS .. ',direction="in"} 2147483653'])
    assert.is_true(got["clb_http_bytes_total{" .. LABELS .. ',direction="out"} 1000000000000001'])
    assert.is_true(got["clb_http_request_duration_seconds_sum{" .. LABELS .. "} 0.0015"])
    local other = text.render({ ["lb-2/l/r/d"] = big }, {})
    assert.is_nil(other:find("lb-1", 1, true))
    assert.equal(1, select(2, other:gsub("# TYPE clb_http_requests_total", "")))
  end)

  it("ignores keys that are no scope", function()
    assert.is_false(text.labels("not a scope"))
    assert.same("lb-1", text.labels(S)[1])
  end)
end)
