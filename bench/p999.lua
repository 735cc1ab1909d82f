-- p999.lua: wrk prints the 99.9th percentile of latency, in microseconds.
done = function(summary, latency, requests)
    io.write(string.format("p99.9: %d\n", latency:percentile(99.9)))
end
