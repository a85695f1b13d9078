/* Test-only: Debian's Wine 8 has no ProcessPrng in bcryptprimitives.dll, which every Rust
 * >= 1.78 Windows program imports for its random numbers, so they exit with code 53 before
 * main. This DLL, put next to wasmos.exe in the Wine tests' own folder (never shipped),
 * answers it from RtlGenRandom (advapi32's SystemFunction036), which Wine has. */
#include <windows.h>

BOOLEAN WINAPI SystemFunction036(PVOID buffer, ULONG length);

__declspec(dllexport) BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T len)
{
    while (len > 0) {
        ULONG chunk = len > 0x40000000 ? 0x40000000 : (ULONG)len;
        if (!SystemFunction036(data, chunk))
            return FALSE;
        data += chunk;
        len -= chunk;
    }
    return TRUE;
}
