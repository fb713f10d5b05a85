--- init_by_lua (nginx start and every reload, in the master): load every data file of the
--- prefix's data directory (one ``<LoadBalancerId>.json`` per load balancer) into shared memory.
--- A malformed file fails the start or the reload with its path and field (``nginx -t`` does not
--- run init_by_lua: the renderer writes the files from validated models).
local cjson = require("cjson.safe")
local ffi = require("ffi")
local spec = require("clb.spec")
local store = require("clb.store")
-- loaded here, in the master, so that workers inherit them and never read the Lua directory
require("clb.balancer")
require("clb.channel")

-- glibc's glob(3): Lua has no directory listing, and this needs no library beyond LuaJIT's FFI
ffi.cdef([[
typedef struct {
  size_t gl_pathc;
  char **gl_pathv;
  size_t gl_offs;
  int gl_flags;
  void (*gl_closedir)(void *);
  void *(*gl_readdir)(void *);
  void *(*gl_opendir)(const char *);
  int (*gl_lstat)(const char *, void *);
  int (*gl_stat)(const char *, void *);
} clb_glob_t;
int glob(const char *pattern, int flags, void *errfunc, clb_glob_t *pglob);
void globfree(clb_glob_t *pglob);
]])
local GLOB_ERR, GLOB_NOMATCH = 1, 3

local M = {}

--- The paths of ``dir``/*.json, sorted (none when the directory is empty or missing).
function M.files(dir)
  local g = ffi.new("clb_glob_t")
  local rc = ffi.C.glob(dir .. "/*.json", GLOB_ERR, nil, g)
  if rc == GLOB_NOMATCH then
    return {}
  end
  if rc ~= 0 then
    error("clb: cannot list " .. dir .. " (glob error " .. rc .. ")", 0)
  end
  local out = {}
  for i = 0, tonumber(g.gl_pathc) - 1 do
    out[#out + 1] = ffi.string(g.gl_pathv[i])
  end
  ffi.C.globfree(g)
  return out
end

--- The validated upstreams of one data file.
function M.read(path)
  local f, err = io.open(path, "rb")
  if not f then
    error("clb: cannot read " .. path .. ": " .. tostring(err), 0)
  end
  local text = f:read("*a")
  f:close()
  local doc, jerr = cjson.decode(text)
  if doc == nil then
    error("clb: " .. path .. " is not JSON: " .. tostring(jerr), 0)
  end
  local upstreams, verr = spec.document(doc)
  if not upstreams then
    error("clb: " .. path .. ": " .. verr.path .. " " .. verr.message, 0)
  end
  return upstreams
end

--- Install the union of every data file of ``dir``; an upstream named by two files is an error.
function M.load_dir(dir)
  local all, from = {}, {}
  for _, path in ipairs(M.files(dir)) do
    for name, upstream in pairs(M.read(path)) do
      if from[name] then
        error("clb: upstream " .. name .. " is in both " .. from[name] .. " and " .. path, 0)
      end
      all[name], from[name] = upstream, path
    end
  end
  local instance = string.format("%d-%d", math.floor(ngx.now() * 1000), ngx.worker.pid())
  store.map_word(ngx.config.prefix() .. store.WORD_FILE)
  local shm = store.new(ngx.shared.clb_upstreams)
  local ok, serr = shm:seed(all, instance)
  if not ok then
    error("clb: " .. dir .. ": " .. serr, 0)
  end
  shm:publish()
end

return M
