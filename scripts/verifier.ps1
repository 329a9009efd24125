<#
.SYNOPSIS
    Turns Driver Verifier on or off for nmr_client.sys and nmr_provider.sys, or shows its settings.

.DESCRIPTION
    -Enable runs
        verifier /standard /driver nmr_client.sys nmr_provider.sys
    The standard set ("Driver Verifier Command Syntax", /standard and the /flags
    table in the Windows driver docs) is these /flags bits, plus WDF verification:
        0x00001  Special Pool              every allocation of the two drivers at the end of a page:
                                           an overrun or a use after free faults at once
                                           (0xC1, 0xD5, 0xD6 instead of silent corruption)
        0x00002  Force IRQL Checking       pageable memory is made invalid whenever the drivers raise
                                           IRQL or take a spin lock: touching it at DISPATCH_LEVEL is
                                           caught (0xC4 / 0xD1) even when it happens to be resident
        0x00008  Pool Tracking             at unload, every allocation not freed is a 0xC4 bug check:
                                           a binding context leaked by a missing cleanup shows up here
        0x00010  I/O Verification
        0x00020  Deadlock Detection        lock order across spin locks, mutexes, fast mutexes
        0x00080  DMA Verification
        0x00100  Security Checks
        0x00800  Miscellaneous Checks      e.g. freeing memory that still holds an active timer or work item
        0x20000  DDI compliance checking   IRQL and usage rules of the kernel DDIs the drivers call
       =0x209BB
    so special pool, IRQL checking and pool tracking need no extra flag.

    -Enable -LowResources runs  verifier /flags 0x209BF /driver ...  instead: the
    same bits plus 0x4, Randomized Low Resources Simulation, which fails some of
    the drivers' allocations at random (by default about 6 % of them, starting 7
    minutes after boot) and so exercises the STATUS_INSUFFICIENT_RESOURCES paths
    (an attach declined for lack of memory must free what it took). /flags does
    not include WDF verification, which these WDM drivers do not use.

    -Disable runs  verifier /reset.
    -Query runs  verifier /querysettings  (what is configured) and  verifier /query
    (what is active now, with counters for each verified driver).

    Enabling or disabling takes effect at the next boot: the script says so, and
    does not reboot. If the machine cannot boot with verification on, boot into
    Safe Mode and run  verifier /reset.

    Needs an elevated PowerShell. -WhatIf shows the verifier command without running it.

.PARAMETER Enable
    Verify both drivers from the next boot on.

.PARAMETER LowResources
    With -Enable: also inject allocation failures (flag 0x4).

.PARAMETER Disable
    Clear every Driver Verifier setting from the next boot on.

.PARAMETER Query
    Show the current settings and, if verification is active, its counters.

.EXAMPLE
    .\scripts\verifier.ps1 -Enable; Restart-Computer

.EXAMPLE
    .\scripts\verifier.ps1 -Query
#>
[CmdletBinding(SupportsShouldProcess = $true, DefaultParameterSetName = 'Query')]
param(
    [Parameter(ParameterSetName = 'Enable', Mandatory = $true)]
    [switch] $Enable,

    [Parameter(ParameterSetName = 'Enable')]
    [switch] $LowResources,

    [Parameter(ParameterSetName = 'Disable', Mandatory = $true)]
    [switch] $Disable,

    [Parameter(ParameterSetName = 'Query')]
    [switch] $Query
)

Set-StrictMode -Version Latest
$ErrorActionPreference = 'Stop'

# Assert-Administrator, Invoke-Native, Invoke-NativeCapture.
. (Join-Path $PSScriptRoot 'NmrCommon.ps1')

$DriverImages = @('nmr_client.sys', 'nmr_provider.sys')
# /standard as /flags bits (see the table above), and the same plus 0x4.
$StandardFlags = 0x209BB
$LowResourcesFlags = $StandardFlags -bor 0x4   # 0x209BF

# Runs verifier.exe, prints its output, and throws unless the exit code is allowed.
# verifier.exe has been seen to exit with 2 after a successful change that needs
# a reboot (virtio-win's test suite accepts 0 and 2 from `verifier /standard
# /driver ...`); the docs list no exit codes, so both count as success here.
function Invoke-Verifier {
    param(
        [Parameter(Mandatory = $true)] [string[]] $ArgumentList,
        [int[]] $AllowedExitCodes = @(0, 2)
    )
    $ErrorActionPreference = 'Continue'   # 5.1: stderr of a native program must not throw
    $commandLine = "verifier.exe $($ArgumentList -join ' ')"
    Write-Verbose "> $commandLine"
    $output = & verifier.exe @ArgumentList 2>&1 | Out-String
    $code = $LASTEXITCODE
    if ($AllowedExitCodes -notcontains $code) {
        throw "'$commandLine' failed with exit code ${code}:`n$output"
    }
    Write-Host $output.TrimEnd()
}

Assert-Administrator -Purpose 'Changing Driver Verifier settings'
switch ($PSCmdlet.ParameterSetName) {
    'Enable' {
        if ($LowResources) {
            $arguments = @('/flags', ('0x{0:X}' -f $LowResourcesFlags), '/driver') + $DriverImages
        } else {
            $arguments = @('/standard', '/driver') + $DriverImages
        }
        if ($PSCmdlet.ShouldProcess(($DriverImages -join ', '), "verifier.exe $($arguments -join ' ')")) {
            Invoke-Verifier -ArgumentList $arguments
            Write-Host ''
            Write-Host 'Driver Verifier is configured for nmr_client.sys and nmr_provider.sys.'
            Write-Host 'REBOOT NOW for it to take effect (Restart-Computer). After the reboot, check with: .\scripts\verifier.ps1 -Query'
        }
    }
    'Disable' {
        if ($PSCmdlet.ShouldProcess('all drivers', 'verifier.exe /reset')) {
            Invoke-Verifier -ArgumentList @('/reset')
            Write-Host ''
            Write-Host 'Driver Verifier settings cleared. REBOOT for verification to stop.'
        }
    }
    'Query' {
        Write-Host '--- verifier /querysettings (configured; applies from the next boot) ---'
        Invoke-Verifier -ArgumentList @('/querysettings') -AllowedExitCodes @(0)
        Write-Host '--- verifier /query (active now) ---'
        Invoke-Verifier -ArgumentList @('/query') -AllowedExitCodes @(0)
    }
}
