-- Drives the in-process filter as Fluent Bit would, without Fluent Bit: loads the filter
-- script, turns each NDJSON line of the input into a nested Lua table (as Fluent Bit passes a
-- record), calls its `cb(tag, timestamp, record)` and writes each record it returns as a JSON
-- line, in order. Used by tests/inprocess.rs and by the benchmark.
--
--   luajit drive.lua SCRIPT INPUT OUTPUT [MODE] [REPEAT]
--
-- MODE: `filter` (default) runs cb (OUTPUT `-`: writes nothing); `walk` runs only the
-- script's record walk (the values the detector would be given are read, the detector is not
-- called), for the benchmark's baseline. REPEAT runs the input that many times (benchmark;
-- the detector keeps learning across rounds, so later rounds' events are late for it). Only
-- the calls are timed, not the decoding of the lines into tables.

local script, input, output, mode, rounds = arg[1], arg[2], arg[3], arg[4] or "filter", tonumber(arg[5] or "1")

-- A small JSON reader: objects become tables with string keys, arrays tables indexed from 1,
-- null is left out (as Fluent Bit's Lua filter does without enable_flb_null).
local function decode(text)
  local pos = 1
  local value
  local function ws()
    pos = text:find("[^ \t\r\n]", pos) or #text + 1
  end
  local escapes = { b = "\b", f = "\f", n = "\n", r = "\r", t = "\t", ['"'] = '"', ["\\"] = "\\", ["/"] = "/" }
  local function utf8(cp)
    if cp < 0x80 then return string.char(cp) end
    if cp < 0x800 then return string.char(0xC0 + math.floor(cp / 64), 0x80 + cp % 64) end
    if cp < 0x10000 then
      return string.char(0xE0 + math.floor(cp / 4096), 0x80 + math.floor(cp / 64) % 64, 0x80 + cp % 64)
    end
    return string.char(0xF0 + math.floor(cp / 262144), 0x80 + math.floor(cp / 4096) % 64,
      0x80 + math.floor(cp / 64) % 64, 0x80 + cp % 64)
  end
  local function str()
    local out = {}
    pos = pos + 1
    while true do
      local s, e = text:find('["\\]', pos)
      out[#out + 1] = text:sub(pos, s - 1)
      local c = text:sub(s, s)
      if c == '"' then
        pos = s + 1
        return table.concat(out)
      end
      local x = text:sub(s + 1, s + 1)
      if x == "u" then
        local cp = tonumber(text:sub(s + 2, s + 5), 16)
        pos = s + 6
        if cp >= 0xD800 and cp < 0xDC00 and text:sub(pos, pos + 1) == "\\u" then
          local lo = tonumber(text:sub(pos + 2, pos + 5), 16)
          cp = 0x10000 + (cp - 0xD800) * 1024 + (lo - 0xDC00)
          pos = pos + 6
        end
        out[#out + 1] = utf8(cp)
      else
        out[#out + 1] = escapes[x]
        pos = s + 2
      end
    end
  end
  function value()
    ws()
    local c = text:sub(pos, pos)
    if c == "{" then
      local t = {}
      pos = pos + 1
      ws()
      if text:sub(pos, pos) == "}" then pos = pos + 1 return t end
      while true do
        ws()
        local k = str()
        ws()
        pos = pos + 1 -- :
        t[k] = value()
        ws()
        local d = text:sub(pos, pos)
        pos = pos + 1
        if d == "}" then return t end
      end
    elseif c == "[" then
      local t, n = {}, 0
      pos = pos + 1
      ws()
      if text:sub(pos, pos) == "]" then pos = pos + 1 return t end
      while true do
        n = n + 1
        t[n] = value()
        ws()
        local d = text:sub(pos, pos)
        pos = pos + 1
        if d == "]" then return t end
      end
    elseif c == '"' then
      return str()
    elseif text:sub(pos, pos + 3) == "true" then
      pos = pos + 4 return true
    elseif text:sub(pos, pos + 4) == "false" then
      pos = pos + 5 return false
    elseif text:sub(pos, pos + 3) == "null" then
      pos = pos + 4 return nil
    else
      local s, e = text:find("^-?[0-9.eE+-]+", pos)
      pos = e + 1
      return tonumber(text:sub(s, e))
    end
  end
  return value()
end

local function encode(v, out)
  local t = type(v)
  if t == "table" then
    if v[1] ~= nil or next(v) == nil then
      out[#out + 1] = "["
      for i = 1, #v do
        if i > 1 then out[#out + 1] = "," end
        encode(v[i], out)
      end
      out[#out + 1] = "]"
    else
      local keys = {}
      for k in pairs(v) do keys[#keys + 1] = k end
      table.sort(keys)
      out[#out + 1] = "{"
      for i, k in ipairs(keys) do
        if i > 1 then out[#out + 1] = "," end
        encode(k, out)
        out[#out + 1] = ":"
        encode(v[k], out)
      end
      out[#out + 1] = "}"
    end
  elseif t == "string" then
    out[#out + 1] = '"' .. v:gsub('[%c"\\]', function(c)
      return string.format("\\u%04x", c:byte())
    end) .. '"'
  elseif t == "number" then
    if v == math.floor(v) and math.abs(v) < 2 ^ 53 then
      out[#out + 1] = string.format("%d", v)
    else
      out[#out + 1] = string.format("%.17g", v)
    end
  elseif t == "boolean" then
    out[#out + 1] = tostring(v)
  else
    out[#out + 1] = "null"
  end
end

dofile(script)

local records = {}
for line in io.lines(input) do
  records[#records + 1] = line
end

local out = output ~= "-" and assert(io.open(output, "wb")) or nil
local walk = egresswatch.walk
local cpu = 0
for _ = 1, rounds do
  -- Records are made afresh each round, outside the timed loop (Fluent Bit hands them over
  -- already decoded).
  local tables = {}
  for i = 1, #records do
    tables[i] = decode(records[i])
  end
  -- The garbage of decoding is collected before, not during, the timed loop.
  collectgarbage()
  local t0 = os.clock()
  if mode == "walk" then
    for i = 1, #tables do
      walk(tables[i])
    end
  elseif out then
    for i = 1, #tables do
      local code, _, result = cb("ecs", 1.5e9, tables[i])
      local parts = {}
      encode(result, parts)
      out:write(string.format("%d ", code), table.concat(parts), "\n")
    end
  else
    for i = 1, #tables do
      cb("ecs", 1.5e9, tables[i])
    end
  end
  cpu = cpu + os.clock() - t0
end
io.stderr:write(string.format("drive: %d records x %d: %.3f s CPU in the loop, %.0f records/s (%s)\n",
  #records, rounds, cpu, #records * rounds / cpu, mode))
if out then out:close() end
