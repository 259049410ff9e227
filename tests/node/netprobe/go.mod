module vaultgram.local/netprobe

go 1.22
