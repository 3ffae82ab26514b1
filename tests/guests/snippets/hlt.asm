; hlt: nothing but `cli; hlt` - the smallest guest there is. The machine must report exit
; status 0 (halted for good) with RIP just past the hlt (0x8002) and no serial output.
    org 0x8000
    bits 16
    cli                             ; mask interrupts so nothing can ever wake the hlt
    hlt
