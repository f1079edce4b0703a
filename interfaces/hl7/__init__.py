"""HL7 v2 interface: MLLP framing, decoding, mapping to commands, ACKs, the listener."""
