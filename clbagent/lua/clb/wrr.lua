--- Smooth weighted round robin, as nginx's ngx_http_upstream_get_peer does it: every usable peer
--- gains its weight, the one with the highest current weight wins and loses the total. Weights
--- 5:1:1 give a a b a c a a, not a a a a a b c. ``tried`` (a set of peer indexes, or nil) holds
--- the peers an earlier try of this request already used. Pure Lua.
local M = {}

function M.pick(peers, tried)
  local best, total = nil, 0
  for i = 1, #peers do
    local p = peers[i]
    if p.usable and not (tried and tried[i]) then
      p.cw = p.cw + p.weight
      total = total + p.weight
      if best == nil or p.cw > best.cw then
        best = p
      end
    end
  end
  if best then
    best.cw = best.cw - total
  end
  return best
end

return M
