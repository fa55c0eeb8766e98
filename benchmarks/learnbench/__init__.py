"""Parts of `benchmarks.learnability`: the tokens it trains on."""
