//! A small assembler for the eBPF instructions the connect tracer uses, with named jump targets
//! so that the program reads top to bottom like its C equivalent would.

use std::collections::HashMap;

/// eBPF registers: `R0` return value, `R1`-`R5` call arguments (clobbered by calls), `R6`-`R9`
/// kept across calls, `R10` the read-only frame pointer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reg(u8);

pub const R0: Reg = Reg(0);
pub const R1: Reg = Reg(1);
pub const R2: Reg = Reg(2);
pub const R3: Reg = Reg(3);
pub const R4: Reg = Reg(4);
pub const R6: Reg = Reg(6);
pub const R7: Reg = Reg(7);
pub const FP: Reg = Reg(10);

/// Access width of a load or store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Size {
    U16,
    U32,
    U64,
}

impl Size {
    fn bits(self) -> u8 {
        match self {
            Size::U32 => 0x00,
            Size::U16 => 0x08,
            Size::U64 => 0x18,
        }
    }
}

const LDX_MEM: u8 = 0x61; // BPF_LDX | BPF_MEM, plus the size bits
const STX_MEM: u8 = 0x63; // BPF_STX | BPF_MEM, plus the size bits
const ALU64_MOV_X: u8 = 0xbf;
const ALU64_MOV_K: u8 = 0xb7;
const ALU64_ADD_K: u8 = 0x07;
const JMP_JA: u8 = 0x05;
const JMP_JEQ_K: u8 = 0x15;
const JMP_JNE_K: u8 = 0x55;
const JMP_CALL: u8 = 0x85;
const JMP_EXIT: u8 = 0x95;
const LD_IMM64: u8 = 0x18;
/// `src_reg` of a 64-bit immediate load that names a map by descriptor.
const PSEUDO_MAP_FD: u8 = 1;

fn insn(code: u8, dst: Reg, src: Reg, off: i16, imm: i32) -> u64 {
    u64::from(code)
        | u64::from(dst.0) << 8
        | u64::from(src.0) << 12
        | u64::from(off as u16) << 16
        | u64::from(imm as u32) << 32
}

/// Instructions being assembled.
#[derive(Debug, Default)]
pub struct Asm {
    code: Vec<u64>,
    labels: HashMap<&'static str, usize>,
    /// Jumps waiting for their target: (instruction index, label).
    fixups: Vec<(usize, &'static str)>,
}

impl Asm {
    /// `dst = *(size *)(src + off)`
    pub fn load(&mut self, size: Size, dst: Reg, src: Reg, off: i16) -> &mut Self {
        self.code
            .push(insn(LDX_MEM | size.bits(), dst, src, off, 0));
        self
    }

    /// `*(size *)(dst + off) = src`
    pub fn store(&mut self, size: Size, dst: Reg, off: i16, src: Reg) -> &mut Self {
        self.code
            .push(insn(STX_MEM | size.bits(), dst, src, off, 0));
        self
    }

    /// `dst = src`
    pub fn mov(&mut self, dst: Reg, src: Reg) -> &mut Self {
        self.code.push(insn(ALU64_MOV_X, dst, src, 0, 0));
        self
    }

    /// `dst = imm`
    pub fn mov_imm(&mut self, dst: Reg, imm: i32) -> &mut Self {
        self.code.push(insn(ALU64_MOV_K, dst, R0, 0, imm));
        self
    }

    /// `dst += imm`
    pub fn add_imm(&mut self, dst: Reg, imm: i32) -> &mut Self {
        self.code.push(insn(ALU64_ADD_K, dst, R0, 0, imm));
        self
    }

    /// `dst = <map whose descriptor is fd>` (two instruction slots).
    pub fn map_fd(&mut self, dst: Reg, fd: i32) -> &mut Self {
        self.code
            .push(insn(LD_IMM64, dst, Reg(PSEUDO_MAP_FD), 0, fd));
        self.code.push(0);
        self
    }

    /// Calls kernel helper number `helper`.
    pub fn call(&mut self, helper: i32) -> &mut Self {
        self.code.push(insn(JMP_CALL, R0, R0, 0, helper));
        self
    }

    /// `if dst != imm goto label`
    pub fn jne(&mut self, dst: Reg, imm: i32, label: &'static str) -> &mut Self {
        self.jump(JMP_JNE_K, dst, imm, label)
    }

    /// `if dst == imm goto label`
    pub fn jeq(&mut self, dst: Reg, imm: i32, label: &'static str) -> &mut Self {
        self.jump(JMP_JEQ_K, dst, imm, label)
    }

    /// `goto label`
    pub fn goto(&mut self, label: &'static str) -> &mut Self {
        self.jump(JMP_JA, R0, 0, label)
    }

    fn jump(&mut self, code: u8, dst: Reg, imm: i32, label: &'static str) -> &mut Self {
        self.fixups.push((self.code.len(), label));
        self.code.push(insn(code, dst, R0, 0, imm));
        self
    }

    /// Names the next instruction.
    pub fn label(&mut self, name: &'static str) -> &mut Self {
        self.labels.insert(name, self.code.len());
        self
    }

    pub fn exit(&mut self) -> &mut Self {
        self.code.push(insn(JMP_EXIT, R0, R0, 0, 0));
        self
    }

    /// The program, with every jump pointed at its label. Panics on a label never defined: a
    /// mistake in the program's source, not in its input.
    pub fn finish(mut self) -> Vec<u64> {
        for (at, label) in std::mem::take(&mut self.fixups) {
            let target = self.labels[label];
            let off = target as i64 - at as i64 - 1;
            let off = i16::try_from(off).expect("jump within range") as u16;
            self.code[at] = (self.code[at] & !(0xffff << 16)) | u64::from(off) << 16;
        }
        self.code
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodings_match_the_instruction_set() {
        // Known encodings (llvm-objdump of clang -target bpf output).
        let mut a = Asm::default();
        a.mov(R6, R1) // bf 16 00 00 00 00 00 00
            .load(Size::U64, R7, R6, 8) // 79 67 08 00 00 00 00 00
            .store(Size::U16, FP, -88, R1) // 6b 1a a8 ff 00 00 00 00
            .mov_imm(R2, 16) // b7 02 00 00 10 00 00 00
            .add_imm(R1, -24) // 07 01 00 00 e8 ff ff ff
            .call(14) // 85 00 00 00 0e 00 00 00
            .map_fd(R1, 7) // 18 11 00 00 07 00 00 00 | 0
            .exit(); // 95 00 00 00 00 00 00 00
        let bytes: Vec<[u8; 8]> = a.finish().iter().map(|i| i.to_le_bytes()).collect();
        assert_eq!(bytes[0], [0xbf, 0x16, 0, 0, 0, 0, 0, 0]);
        assert_eq!(bytes[1], [0x79, 0x67, 8, 0, 0, 0, 0, 0]);
        assert_eq!(bytes[2], [0x6b, 0x1a, 0xa8, 0xff, 0, 0, 0, 0]);
        assert_eq!(bytes[3], [0xb7, 0x02, 0, 0, 16, 0, 0, 0]);
        assert_eq!(bytes[4], [0x07, 0x01, 0, 0, 0xe8, 0xff, 0xff, 0xff]);
        assert_eq!(bytes[5], [0x85, 0, 0, 0, 14, 0, 0, 0]);
        assert_eq!(bytes[6], [0x18, 0x11, 0, 0, 7, 0, 0, 0]);
        assert_eq!(bytes[7], [0; 8]);
        assert_eq!(bytes[8], [0x95, 0, 0, 0, 0, 0, 0, 0]);
    }

    #[test]
    fn jumps_land_on_their_labels_forward_and_back() {
        let mut a = Asm::default();
        a.label("top")
            .jne(R1, 2, "end") // 0 → 3: off 2
            .jeq(R0, 0, "top") // 1 → 0: off -2
            .goto("end") // 2 → 3: off 0
            .label("end")
            .exit();
        let code = a.finish();
        let off = |i: usize| (code[i] >> 16) as u16 as i16;
        assert_eq!((off(0), off(1), off(2)), (2, -2, 0));
        assert_eq!(code[0] as u8, 0x55);
        assert_eq!((code[0] >> 32) as i32, 2);
    }
}
