module ttm

go 1.19
