package policies

// ProcessCPU is processCPU for the external benchmarks.
var ProcessCPU = processCPU
