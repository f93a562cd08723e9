/* SPDX-License-Identifier: GPL-2.0 WITH Linux-syscall-note */
/*
 * Minimal stand-in for the UAPI <linux/types.h>, written for svclab.
 *
 * The real header pulls in <asm/types.h>, which lives in an architecture
 * directory that a -target bpf build with -nostdinc cannot (and should not)
 * find. The BPF target is a fixed 64-bit ABI, so the fixed-width integer
 * types that linux/bpf.h and libbpf's helper headers use can be spelled out
 * directly. Only what those headers need is defined here.
 */
#ifndef __SVCLAB_LINUX_TYPES_H
#define __SVCLAB_LINUX_TYPES_H

/* Claim the guards of the real headers so nothing pulls them in later. */
#define _LINUX_TYPES_H
#define _UAPI_LINUX_TYPES_H
#define __ASM_GENERIC_INT_LL64_H

typedef signed char __s8;
typedef unsigned char __u8;
typedef signed short __s16;
typedef unsigned short __u16;
typedef signed int __s32;
typedef unsigned int __u32;
typedef signed long long __s64;
typedef unsigned long long __u64;

/* Byte-order annotations only document intent; sparse is not used here. */
typedef __u16 __le16;
typedef __u16 __be16;
typedef __u32 __le32;
typedef __u32 __be32;
typedef __u64 __le64;
typedef __u64 __be64;

typedef __u16 __sum16;
typedef __u32 __wsum;

/* 64-bit fields in bpf_attr must be 8-byte aligned on every ABI. */
#define __aligned_u64 __u64 __attribute__((aligned(8)))
#define __aligned_be64 __be64 __attribute__((aligned(8)))
#define __aligned_le64 __le64 __attribute__((aligned(8)))

#endif /* __SVCLAB_LINUX_TYPES_H */
