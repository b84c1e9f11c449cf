-- replay.lua at a steady rate: each connection waits an exponentially distributed
-- time (mean given as the third argument, in ms) before each request, so that
-- requests arrive roughly as a Poisson stream instead of back to back.
-- Arguments (after `--`): <file> <threads> <mean delay ms>.

local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(here .. "replay.lua")

local base_init = init
local mean_delay = 0

function init(args)
   base_init(args)
   mean_delay = tonumber(args[3]) or 0
end

function delay()
   return math.floor(-math.log(1 - math.random()) * mean_delay)
end
