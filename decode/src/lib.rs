//! Decode: x86-64 instruction + recorded registers → the exact memory ranges it touches.
