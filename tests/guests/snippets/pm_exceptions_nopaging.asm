; pm_exceptions_nopaging: pm_exceptions.asm without paging and its #PF (see there).
%define NO_PAGING
%include "pm_exceptions.asm"
