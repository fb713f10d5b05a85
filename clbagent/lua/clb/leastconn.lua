--- Least connections, as nginx's least_conn: the usable peer with the fewest active connections
--- relative to its weight; ties are broken by smooth weighted round robin among the tied peers.
--- ``conns(peer)`` gives the peer's active connections (counted across workers by the caller).
--- Pure Lua.
local M = {}

--- Each candidate's count is kept on the peer (``lc``, nil for the others) for the tie break:
--- no table per request.
function M.pick(peers, tried, conns)
  local best, best_conns, many = nil, 0, false
  for i = 1, #peers do
    local p = peers[i]
    p.lc = nil
    if p.usable and not (tried and tried[i]) then
      local c = conns(p)
      p.lc = c
      if best == nil or c * best.weight < best_conns * p.weight then
        best, best_conns, many = p, c, false
      elseif c * best.weight == best_conns * p.weight then
        many = true
      end
    end
  end
  if not many then
    return best
  end
  local first, total = best, 0
  for i = first.index, #peers do
    local p = peers[i]
    local c = p.lc
    if c and c * first.weight == best_conns * p.weight then
      p.cw = p.cw + p.weight
      total = total + p.weight
      if p.cw > best.cw then
        best = p
      end
    end
  end
  best.cw = best.cw - total
  return best
end

return M
