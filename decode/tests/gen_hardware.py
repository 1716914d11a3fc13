#!/usr/bin/env python3
"""Regenerates hardware.txt: small programs assembled with GNU as.

Each case: OFF (rdi = P + OFF, where P is a readable page between two
PROT_NONE pages), setup instructions, the instruction under test, and the
registers the decoder sees (same syntax as ranges.txt; `@N` = P + N).
Run: python3 decode/tests/gen_hardware.py > decode/tests/hardware.txt
"""
import subprocess, tempfile, os

K1 = lambda m: [f"mov rax, {m}", "kmovq k1, rax"]
# ymm1 = element 0 has its sign bit set, others 0 (VEX vmovd zeroes the rest)
MASK0 = ["mov eax, 0x80000000", "vmovd xmm1, eax"]
ONES2 = ["vpcmpeqd ymm2, ymm2, ymm2"]           # ymm2 = all -1 (index -1)
ZONES2 = ["vpternlogd zmm2, zmm2, zmm2, 0xff"]  # zmm2 = all -1

CASES = [
    # AVX-512 masked: element 0 is the last element of the page; the rest would fault.
    (4092, K1(1), "vmovdqu32 zmm0{k1}, [rdi]", "k1=1"),
    (4092, K1(1), "vmovdqu32 [rdi]{k1}, zmm1", "k1=1"),
    (4095, K1(1), "vmovdqu8 zmm0{k1}{z}, [rdi]", "k1=1"),
    (-62, K1(0x80000000), "vmovdqu16 zmm0{k1}, [rdi]", "k1=0x80000000"),
    (4094, K1(0), "vmovdqu32 zmm0{k1}, [rdi]", "k1=0"),
    (4092, K1(1), "vpaddd zmm0{k1}, zmm1, [rdi]", "k1=1"),
    (4092, K1(1), "vpcmpeqd k2{k1}, zmm1, [rdi]", "k1=1"),
    (4092, K1(1), "vpsllvd zmm0{k1}, zmm1, [rdi]", "k1=1"),
    (4092, K1(1), "vcvtps2pd zmm0{k1}, [rdi]", "k1=1"),
    (4095, K1(1), "vpmovzxbd zmm0{k1}, [rdi]", "k1=1"),
    (4095, K1(1), "vpmovdb [rdi]{k1}, zmm0", "k1=1"),
    (4092, K1(0), "vmovss xmm0{k1}, [rdi]", "k1=0"),
    (4094, K1(0), "vpaddd zmm0{k1}, zmm1, [rdi]{1to16}", "k1=0"),
    (4094, K1(0xffff), "vpaddd zmm0{k1}, zmm1, [rdi]{1to16}", "k1=0xffff"),
    # compress/expand: popcount(k) consecutive elements
    (4084, K1(0b111), "vpcompressd [rdi]{k1}, zmm0", "k1=0b111"),
    (4088, K1(0b111), "vpcompressd [rdi]{k1}, zmm0", "k1=0b111"),
    (4092, K1(0x8000), "vpexpandd zmm0{k1}, [rdi]", "k1=0x8000"),
    # permutes/shuffles: no fault suppression
    (4092, K1(1), "vpermd zmm0{k1}, zmm1, [rdi]", "k1=1"),
    (4095, K1(1), "vpshufb zmm0{k1}, zmm1, [rdi]", "k1=1"),
    (4092, K1(1), "vpunpckldq zmm0{k1}, zmm1, [rdi]", "k1=1"),
    (4092, K1(1), "valignd zmm0{k1}, zmm1, [rdi], 1", "k1=1"),
    (4088, K1(1), "vmovddup zmm0{k1}, [rdi]", "k1=1"),
    (4092, K1(1), "vpermilps zmm0{k1}, [rdi], 0", "k1=1"),
    (4092, K1(1), "vpshufd zmm0{k1}, [rdi], 0", "k1=1"),
    # tuple broadcast / insert: any mask bit reads the whole operand
    (4092, K1(1), "vbroadcasti32x4 zmm0{k1}, [rdi]", "k1=1"),
    (4092, K1(1), "vinserti32x4 zmm0{k1}, zmm1, [rdi], 0", "k1=1"),
    (4092, K1(0), "vbroadcasti32x4 zmm0{k1}, [rdi]", "k1=0"),
    (4092, K1(0x10), "vbroadcasti32x4 zmm0{k1}, [rdi]", "k1=0x10"),
    (4092, K1(0x20), "vbroadcasti32x4 zmm0{k1}, [rdi]", "k1=0x20"),
    (4080, K1(0x1000), "vbroadcasti32x4 zmm0{k1}, [rdi]", "k1=0x1000"),
    (4088, K1(0x2), "vbroadcasti64x2 zmm0{k1}, [rdi]", "k1=0x2"),
    (4088, K1(0x4), "vbroadcasti64x2 zmm0{k1}, [rdi]", "k1=0x4"),
    (4094, K1(0), "vpbroadcastd zmm0{k1}, [rdi]", "k1=0"),
    (4094, K1(0x100), "vpbroadcastd zmm0{k1}, [rdi]", "k1=0x100"),
    (4092, K1(0), "vinserti32x4 zmm0{k1}, zmm1, [rdi], 0", "k1=0"),
    (4092, K1(0x10), "vshufi32x4 zmm0{k1}, zmm1, [rdi], 0", "k1=0x10"),
    (4088, K1(0b11), "vpexpandd zmm0{k1}, [rdi]", "k1=0b11"),
    (4092, K1(1), "vpternlogd zmm0{k1}, zmm1, [rdi], 0x96", "k1=1"),
    (4092, K1(1), "vfmadd231ps zmm0{k1}, zmm1, [rdi]", "k1=1"),
    (4092, K1(1), "vpmovsxdq zmm0{k1}, [rdi]", "k1=1"),
    (4094, K1(1), "vpmovwb [rdi]{k1}, zmm0", "k1=1"),
    (4092, K1(1), "vpcmpd k2{k1}, zmm1, [rdi], 1", "k1=1"),
    (4092, K1(1), "vptestmd k2{k1}, zmm1, [rdi]", "k1=1"),
    (4092, K1(1), "vpconflictd zmm0{k1}, [rdi]", "k1=1"),
    (4092, K1(1), "vextracti32x4 [rdi]{k1}, zmm0, 1", "k1=1"),
    (4092, K1(1), "vpermt2d zmm0{k1}, zmm1, [rdi]", "k1=1"),
    (4092, K1(1), "vpblendmd zmm0{k1}, zmm1, [rdi]", "k1=1"),
    (4092, K1(1), "vpmaddwd zmm0{k1}, zmm1, [rdi]", "k1=1"),
    (4094, K1(1), "vpmaddwd zmm0{k1}, zmm1, [rdi]", "k1=1"),
    (4088, K1(0b10), "vpmaddubsw zmm0{k1}, zmm1, [rdi]", "k1=0b10"),
    (4092, K1(1), "vpackssdw zmm0{k1}, zmm1, [rdi]", "k1=1"),
    (4092, K1(0), "vpackssdw zmm0{k1}, zmm1, [rdi]", "k1=0"),
    (4092, K1(0), "vextracti32x4 [rdi]{k1}, zmm0, 1", "k1=0"),
    (4092, K1(1), "vpdpbusd zmm0{k1}, zmm1, [rdi]", "k1=1"),
    (4092, K1(1), "vcvtph2ps zmm0{k1}, [rdi]", "k1=1"),
    (4094, K1(1), "vcvtps2ph [rdi]{k1}, zmm0, 0", "k1=1"),
    (4092, K1(1), "vpsravd zmm0{k1}, zmm1, [rdi]", "k1=1"),
    (4092, K1(1), "vpopcntd zmm0{k1}, [rdi]", "k1=1"),
    (4092, K1(1), "vplzcntd zmm0{k1}, [rdi]", "k1=1"),
    (4092, K1(1), "vpabsd zmm0{k1}, [rdi]", "k1=1"),
    (4092, K1(1), "vgetexpps zmm0{k1}, [rdi]", "k1=1"),
    (4092, K1(1), "vrndscaleps zmm0{k1}, [rdi], 0", "k1=1"),
    (4092, K1(1), "vpsllw zmm0{k1}, zmm1, [rdi]", "k1=1"),
    (4092, K1(1), "vpslld zmm0{k1}, [rdi], 3", "k1=1"),
    (4088, K1(1), "vmovsd xmm0{k1}, [rdi]", "k1=0"),
    (4092, K1(1), "vpcompressb [rdi]{k1}, zmm0", "k1=1"),
    (4095, K1(1), "vpcompressb [rdi]{k1}, zmm0", "k1=1"),
    (4092, K1(1), "vpshufbitqmb k2{k1}, zmm1, [rdi]", "k1=1"),
    (4092, K1(1), "vpmovqd [rdi]{k1}, zmm0", "k1=1"),
    (4092, K1(1), "vscalefps zmm0{k1}, zmm1, [rdi]", "k1=1"),
    # AVX2 vector masks
    (4092, MASK0, "vmaskmovps ymm0, ymm1, [rdi]", "ymm1=d:0x80000000"),
    (4092, MASK0, "vpmaskmovd [rdi], ymm1, ymm0", "ymm1=d:0x80000000"),
    (4095, ["mov eax, 0x80", "movd xmm1, eax"], "maskmovdqu xmm0, xmm1", "xmm1=x:80"),
    # gathers/scatters with index -1: element at P-4 (guard page)
    (0, MASK0 + ONES2, "vpgatherdd ymm0, [rdi+ymm2*4], ymm1", "ymm1=d:0x80000000 ymm2=d:-1,-1,-1,-1,-1,-1,-1,-1"),
    (0, ["vpxor ymm1, ymm1, ymm1"] + ONES2, "vpgatherdd ymm0, [rdi+ymm2*4], ymm1", "ymm1=d:0 ymm2=d:-1,-1,-1,-1,-1,-1,-1,-1"),
    (4, MASK0 + ONES2, "vpgatherdd ymm0, [rdi+ymm2*4], ymm1", "ymm1=d:0x80000000 ymm2=d:-1,-1,-1,-1,-1,-1,-1,-1"),
    (0, K1(1) + ZONES2, "vpgatherdd zmm0{k1}, [rdi+zmm2*4]", "k1=1 zmm2=d:-1,-1,-1,-1,-1,-1,-1,-1,-1,-1,-1,-1,-1,-1,-1,-1"),
    (0, K1(0) + ZONES2, "vpscatterdd [rdi+zmm2*4]{k1}, zmm0", "k1=0 zmm2=d:-1,-1,-1,-1,-1,-1,-1,-1,-1,-1,-1,-1,-1,-1,-1,-1"),
    (0, K1(1) + ZONES2, "vpscatterdd [rdi+zmm2*4]{k1}, zmm0", "k1=1 zmm2=d:-1,-1,-1,-1,-1,-1,-1,-1,-1,-1,-1,-1,-1,-1,-1,-1"),
    # rep strings, both directions, both page edges
    (4080, ["mov ecx, 16"], "rep stosb", "rcx=16"),
    (4080, ["mov ecx, 17"], "rep stosb", "rcx=17"),
    (15, ["mov ecx, 16", "std"], "rep stosb", "rcx=16 rflags=0x400"),
    (15, ["mov ecx, 17", "std"], "rep stosb", "rcx=17 rflags=0x400"),
    (8, ["mov ecx, 2", "lea rsi, [rdi+8]", "std"], "rep movsq", "rcx=2 rsi=@16 rflags=0x400"),
    (8, ["mov ecx, 3", "lea rsi, [rdi+8]", "std"], "rep movsq", "rcx=3 rsi=@16 rflags=0x400"),
    (4064, ["mov ecx, 8", "lea rsi, [rdi-4000]"], "rep movsd", "rcx=8 rsi=@64"),
    (4064, ["mov ecx, 9", "lea rsi, [rdi-4000]"], "rep movsd", "rcx=9 rsi=@64"),
    (0, ["mov ecx, 0", "std"], "rep movsb", "rcx=0 rflags=0x400 rsi=@0"),
    (4090, ["mov ecx, 6", "xor eax, eax"], "repne scasb", "rcx=6"),
    # bit strings: the signed bit offset selects the dword
    (0, ["mov eax, -1"], "bt dword ptr [rdi], eax", "rax=0xffffffff"),
    (4092, ["mov eax, 31"], "bt dword ptr [rdi], eax", "rax=31"),
    (4088, ["mov eax, 32"], "bts dword ptr [rdi], eax", "rax=32"),
    # push/pop with memory operands, call through memory (target: the exit code)
    (4088, [], "push qword ptr [rdi]", ""),
    (4089, [], "push qword ptr [rdi]", ""),
    (4088, ["push rax"], "pop qword ptr [rdi]", ""),
    (4092, ["mov eax, 0x12345678"], "xchg [rdi], eax", "rax=0x12345678"),
    (4093, [], "lock xadd [rdi], eax", ""),
    (4092, ["xor eax, eax"], "cmpxchg [rdi], ecx", ""),
]

# Operand sizes: at `end` the last byte of the operand is the page's last
# byte (no fault), at `end+N` it crosses (fault). N = 16 for aligned forms.
SIZE_CASES = [
    ([], "fld tbyte ptr [rdi]", 1), ([], "fstp tbyte ptr [rdi]", 1), ([], "fnstenv [rdi]", 1), ([], "fldenv [rdi]", 1),
    ([], "fnsave [rdi]", 1), ([], "fbld [rdi]", 1), ([], "fild word ptr [rdi]", 1), ([], "fisttp qword ptr [rdi]", 1),
    ([], "fxsave [rdi]", 16), ([], "fxsave64 [rdi]", 16), ([], "fxrstor [rdi]", 16),
    (["mov eax, -1", "mov edx, -1"], "xsave [rdi]", 64),
    ([], "movdqu xmm0, [rdi]", 1), ([], "movhps xmm0, qword ptr [rdi]", 1), ([], "pinsrb xmm0, byte ptr [rdi], 1", 1),
    ([], "vpinsrq xmm0, xmm0, qword ptr [rdi], 1", 1), ([], "vmovddup xmm0, qword ptr [rdi]", 1), ([], "vpmovzxbq xmm0, word ptr [rdi]", 1),
    ([], "vpmovzxbd ymm0, qword ptr [rdi]", 1), ([], "vcvtph2ps xmm0, qword ptr [rdi]", 1), ([], "vpbroadcastb xmm0, byte ptr [rdi]", 1),
    ([], "vbroadcasti128 ymm0, [rdi]", 1), ([], "vinserti128 ymm0, ymm0, [rdi], 1", 1), ([], "vextracti128 [rdi], ymm0, 1", 1),
    ([], "vperm2i128 ymm0, ymm0, [rdi], 1", 1), ([], "aesenc xmm0, [rdi]", 16), ([], "pclmulqdq xmm0, [rdi], 0", 16),
    ([], "pextrb byte ptr [rdi], xmm0, 1", 1), ([], "extractps dword ptr [rdi], xmm0, 1", 1), ([], "vcvtps2ph qword ptr [rdi], xmm0, 0", 1),
    ([], "vpmovwb [rdi], zmm0", 1), ([], "vmovdqu64 [rdi], zmm0", 1), ([], "vmovdqu ymm0, [rdi]", 1),
    ([], "ldmxcsr [rdi]", 1), ([], "stmxcsr [rdi]", 1), ([], "cvtsi2sd xmm0, dword ptr [rdi]", 1), ([], "roundsd xmm0, qword ptr [rdi], 0", 1),
    ([], "ptest xmm0, [rdi]", 1), ([], "lddqu xmm0, [rdi]", 1), ([], "movntdqa xmm0, [rdi]", 16),
    (["xor eax, eax", "xor edx, edx"], "cmpxchg16b [rdi]", 16), ([], "movbe eax, [rdi]", 1), ([], "crc32 eax, word ptr [rdi]", 1),
    ([], "popcnt rax, [rdi]", 1), ([], "shld [rdi], eax, 3", 1), ([], "imul eax, [rdi], 7", 1), ([], "mul dword ptr [rdi]", 1),
    ([], "movdiri [rdi], rax", 1), ([], "vpcmpestri xmm0, [rdi], 0", 1),
]

def asm(lines):
    with tempfile.TemporaryDirectory() as d:
        src = os.path.join(d, "x.s"); obj = os.path.join(d, "x.o"); out = os.path.join(d, "x.bin")
        open(src, "w").write(".intel_syntax noprefix\n" + "\n".join(lines) + "\n")
        subprocess.run(["as", "-o", obj, src], check=True)
        subprocess.run(["objcopy", "-O", "binary", "-j", ".text", obj, out], check=True)
        return open(out, "rb").read()

def hx(b):
    return " ".join(f"{x:02x}" for x in b)

print("# Hardware oracle cases, generated by gen_hardware.py (GNU as). Do not edit by hand.")
print("#   OFF | PREFIX HEX (movabs rdi, <patched>; setup) | INSTRUCTION HEX | DECODER REGISTERS  # source")
print(f"# exit suffix: {hx(asm(['mov eax, 231', 'xor edi, edi', 'syscall']))}")
for setup, insn, n in SIZE_CASES:
    CASES.append(("end", setup, insn, ""))
    CASES.append((f"end+{n}", setup, insn, ""))
for off, setup, insn, regs in CASES:
    prefix = asm(["movabs rdi, 0x1122334455667788"] + setup)
    assert prefix[:2] == bytes([0x48, 0xbf]), prefix
    print(f"{off} | {hx(prefix)} | {hx(asm([insn]))} | {regs}  # {insn}; setup: {'; '.join(setup)}")
