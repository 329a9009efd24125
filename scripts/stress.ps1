<#
.SYNOPSIS
    Load/unload stress of nmr_client and nmr_provider with sc.exe.

.DESCRIPTION
    Each cycle starts both drivers in a random order (client first or provider
    first), keeps them loaded for a random time (0..HoldMilliseconds, so that calls
    between them are sometimes in flight when one is stopped), then stops them in
    a random order. After every sc.exe command it polls `sc.exe query <service>`
    until the STATE line says RUNNING (4) or STOPPED (1), within TimeoutSeconds.

    Every order exercises a different NMR path: the second driver to start
    attaches inside its own NmrRegister* call; the first one to stop detaches
    the binding while the other keeps running (and may answer STATUS_PENDING
    while a call is in flight); the second one to stop deregisters with no
    binding left.

    The run stops at the first failure, naming the cycle, the service, the
    command, its exit code and its output. The seed is printed so that a failing
    order can be replayed with -Seed. A failure that is a bug check shows up as a
    reboot instead: read the dump with WinDbg (docs/windbg.md).

    Needs an elevated PowerShell and both services installed (scripts\install.ps1).
    -WhatIf lists the commands of every cycle without running them.

.PARAMETER Cycles
    Number of start/stop cycles (default 100).

.PARAMETER Seed
    Seed of the random orders and hold times (default: derived from the clock).

.PARAMETER HoldMilliseconds
    Upper bound of the random time both drivers stay loaded in a cycle (default 200).

.PARAMETER TimeoutSeconds
    How long one sc.exe command, and then its state change, may take (default 30).
    An sc.exe stop that does not return in time usually means a DriverUnload
    blocked in NmrWaitFor*DeregisterComplete: break in with the debugger.

.EXAMPLE
    .\scripts\stress.ps1 -Cycles 1000

.EXAMPLE
    .\scripts\stress.ps1 -Cycles 50 -Seed 12345 -HoldMilliseconds 0
#>
[CmdletBinding(SupportsShouldProcess = $true)]
param(
    [ValidateRange(1, [int]::MaxValue)]
    [int] $Cycles = 100,

    [int] $Seed = [Environment]::TickCount,

    [ValidateRange(0, 600000)]
    [int] $HoldMilliseconds = 200,

    [ValidateRange(1, 3600)]
    [int] $TimeoutSeconds = 30
)

Set-StrictMode -Version Latest
$ErrorActionPreference = 'Stop'

# Assert-Administrator, Invoke-Native, Invoke-NativeCapture.
. (Join-Path $PSScriptRoot 'NmrCommon.ps1')

# The script's own ShouldProcess (it carries -WhatIf and -Confirm). The helper
# functions below call it through this variable: a function with [Parameter()]
# attributes is an advanced function whose own $PSCmdlet does not declare
# SupportsShouldProcess.
$ScriptCmdlet = $PSCmdlet

$Services = @('nmr_client', 'nmr_provider')
# Service states as `sc.exe query` prints them (SERVICE_STATUS.dwCurrentState).
$StateRunning = 4
$StateStopped = 1

# One failure ends the run: a message with everything needed to reproduce it.
function Stop-Run {
    param(
        [Parameter(Mandatory = $true)] [string] $Cycle,
        [Parameter(Mandatory = $true)] [string] $Service,
        [Parameter(Mandatory = $true)] [string] $Command,
        [Parameter(Mandatory = $true)] [string] $ExitCode,
        [string] $Output = '',
        [string] $Reason = ''
    )
    $message = "FAILED in cycle $Cycle of $Cycles (seed $Seed): service $Service, command '$Command', exit code $ExitCode."
    if ($Reason) { $message += " $Reason" }
    if ($Output) { $message += "`nOutput:`n$Output" }
    throw $message
}

# Runs sc.exe with a time limit (a blocked DriverUnload keeps `sc.exe stop` from
# returning). Returns exit code and output; ExitCode is $null on a timeout.
function Invoke-Sc {
    param([Parameter(Mandatory = $true)] [string[]] $ArgumentList)
    $info = New-Object System.Diagnostics.ProcessStartInfo
    $info.FileName = Join-Path $env:SystemRoot 'System32\sc.exe'
    $info.Arguments = $ArgumentList -join ' '   # service names and verbs only: no quoting needed
    $info.UseShellExecute = $false
    $info.RedirectStandardOutput = $true
    $info.RedirectStandardError = $true
    $info.CreateNoWindow = $true
    $process = [System.Diagnostics.Process]::Start($info)
    $stdout = $process.StandardOutput.ReadToEndAsync()
    $stderr = $process.StandardError.ReadToEndAsync()
    if (-not $process.WaitForExit($TimeoutSeconds * 1000)) {
        return [pscustomobject]@{ ExitCode = $null; Output = "(no exit after $TimeoutSeconds s; sc.exe left running, pid $($process.Id))" }
    }
    $process.WaitForExit()   # lets the asynchronous reads finish
    $output = ($stdout.Result + $stderr.Result).Trim()
    return [pscustomobject]@{ ExitCode = $process.ExitCode; Output = $output }
}

# The numeric STATE of a service from `sc.exe query`, or fails the run.
function Get-ServiceState {
    param(
        [Parameter(Mandatory = $true)] [string] $Service,
        [Parameter(Mandatory = $true)] [string] $Cycle
    )
    $result = Invoke-Sc -ArgumentList @('query', $Service)
    if ($null -eq $result.ExitCode) {
        Stop-Run -Cycle $Cycle -Service $Service -Command "sc.exe query $Service" -ExitCode 'none (timeout)' -Output $result.Output
    }
    if ($result.ExitCode -ne 0) {
        $reason = ''
        if ($result.ExitCode -eq 1060) { $reason = 'No such service: install it first (scripts\install.ps1).' }
        Stop-Run -Cycle $Cycle -Service $Service -Command "sc.exe query $Service" -ExitCode "$($result.ExitCode)" -Output $result.Output -Reason $reason
    }
    if ($result.Output -match '(?m)^\s*STATE\s*:\s*(\d+)') { return [int]$Matches[1] }
    Stop-Run -Cycle $Cycle -Service $Service -Command "sc.exe query $Service" -ExitCode '0' -Output $result.Output -Reason 'No STATE line in the output.'
}

# Polls `sc.exe query` until the service is in $Wanted, or fails the run.
function Wait-ServiceState {
    param(
        [Parameter(Mandatory = $true)] [string] $Service,
        [Parameter(Mandatory = $true)] [int] $Wanted,
        [Parameter(Mandatory = $true)] [string] $Cycle,
        [Parameter(Mandatory = $true)] [string] $AfterCommand
    )
    $deadline = [DateTime]::UtcNow.AddSeconds($TimeoutSeconds)
    while ($true) {
        $state = Get-ServiceState -Service $Service -Cycle $Cycle
        if ($state -eq $Wanted) { return }
        if ([DateTime]::UtcNow -ge $deadline) {
            $last = Invoke-Sc -ArgumentList @('query', $Service)
            Stop-Run -Cycle $Cycle -Service $Service -Command $AfterCommand -ExitCode '0' -Output $last.Output `
                -Reason "STATE stayed $state instead of reaching $Wanted within $TimeoutSeconds s."
        }
        Start-Sleep -Milliseconds 50
    }
}

# sc.exe start|stop <service>, then wait for RUNNING|STOPPED.
function Invoke-ServiceCommand {
    param(
        [Parameter(Mandatory = $true)] [ValidateSet('start', 'stop')] [string] $Verb,
        [Parameter(Mandatory = $true)] [string] $Service,
        [Parameter(Mandatory = $true)] [string] $Cycle
    )
    $command = "sc.exe $Verb $Service"
    if (-not $script:ScriptCmdlet.ShouldProcess($Service, "sc.exe $Verb (cycle $Cycle)")) { return }
    $result = Invoke-Sc -ArgumentList @($Verb, $Service)
    if ($null -eq $result.ExitCode) {
        Stop-Run -Cycle $Cycle -Service $Service -Command $command -ExitCode 'none (timeout)' -Output $result.Output `
            -Reason 'sc.exe did not return: the driver is stuck in DriverEntry or DriverUnload.'
    }
    if ($result.ExitCode -ne 0) {
        $hint = switch ($result.ExitCode) {
            577 { 'ERROR_INVALID_IMAGE_HASH: the signature is not trusted (test signing off?).' }
            1056 { 'ERROR_SERVICE_ALREADY_RUNNING: something else started it.' }
            1062 { 'ERROR_SERVICE_NOT_ACTIVE: it was not running.' }
            1052 { 'ERROR_INVALID_SERVICE_CONTROL: the driver cannot be stopped (no DriverUnload?).' }
            1275 { 'ERROR_DRIVER_BLOCKED: blocked by policy (HVCI / vulnerable driver blocklist?).' }
            default { '' }
        }
        Stop-Run -Cycle $Cycle -Service $Service -Command $command -ExitCode "$($result.ExitCode)" -Output $result.Output -Reason $hint
    }
    $wanted = $StateStopped
    if ($Verb -eq 'start') { $wanted = $StateRunning }
    Wait-ServiceState -Service $Service -Wanted $wanted -Cycle $Cycle -AfterCommand $command
}

Assert-Administrator -Purpose 'Starting and stopping drivers'
$random = New-Object System.Random($Seed)
Write-Host "Stress: $Cycles cycles, seed $Seed, hold 0..$HoldMilliseconds ms, timeout $TimeoutSeconds s."

# Start from a known state: both installed and stopped.
foreach ($service in $Services) {
    $state = Get-ServiceState -Service $service -Cycle '0 (setup)'
    if ($state -ne $StateStopped) {
        Write-Host "$service is not stopped (STATE $state): stopping it first."
        Invoke-ServiceCommand -Verb 'stop' -Service $service -Cycle '0 (setup)'
    }
}

$watch = [System.Diagnostics.Stopwatch]::StartNew()
for ($cycle = 1; $cycle -le $Cycles; $cycle++) {
    $startOrder = @('nmr_provider', 'nmr_client')
    if ($random.Next(2) -eq 1) { $startOrder = @('nmr_client', 'nmr_provider') }
    $stopOrder = @('nmr_provider', 'nmr_client')
    if ($random.Next(2) -eq 1) { $stopOrder = @('nmr_client', 'nmr_provider') }
    $hold = 0
    if ($HoldMilliseconds -gt 0) { $hold = $random.Next($HoldMilliseconds + 1) }

    foreach ($service in $startOrder) { Invoke-ServiceCommand -Verb 'start' -Service $service -Cycle "$cycle" }
    if ($hold -gt 0 -and -not $WhatIfPreference) { Start-Sleep -Milliseconds $hold }
    foreach ($service in $stopOrder) { Invoke-ServiceCommand -Verb 'stop' -Service $service -Cycle "$cycle" }

    Write-Host ("cycle {0}/{1}: start {2}, hold {3} ms, stop {4}: ok" -f $cycle, $Cycles,
        ($startOrder -join ' then '), $hold, ($stopOrder -join ' then '))
}

if ($WhatIfPreference) {
    Write-Host "What if: $Cycles cycles listed, none run."
} else {
    Write-Host ("{0} cycles passed in {1:N1} s (seed {2})." -f $Cycles, $watch.Elapsed.TotalSeconds, $Seed)
}
