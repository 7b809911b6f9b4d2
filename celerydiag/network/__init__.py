"""Network cause: packet capture (``capture/``, live or from a pcap/pcapng) and the probe that
turns a capture into findings."""
